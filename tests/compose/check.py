#!/usr/bin/env python3
"""Checks compose.yaml and the Dockerfile without a Docker engine.

No Docker engine runs where casm's CI runs, so nothing here starts a
container. Instead:

  compose    `docker-compose config -q` must accept compose.yaml, and the
             configuration it resolves must keep the promises of the
             README: real PostgreSQL 16 and Apache Kafka in KRaft mode with
             healthchecks, a one-shot migration before the stages, every
             casm process depending on healthy or completed services, only
             the gateway publishing a port, no container_name, a
             stop_grace_period above SHUTDOWN_GRACE_MS, the environment the
             processes need, and no variable that no casm process reads.
  dockerfile The Dockerfile builds the way `make build` does (it runs
             scripts/deps.sh and make build), copies every program that
             CMake builds, starts from Debian bookworm, and installs the
             package of every shared library the built programs load.

  check.py compose|dockerfile SOURCE_DIR [BUILD_DIR]

PyYAML is Debian's python3-yaml (scripts/deps.sh); when the python3 that
runs this has no yaml module, the script runs itself again with Debian's
/usr/bin/python3."""

import os
import re
import subprocess
import sys

try:
    import yaml
except ImportError:
    if sys.executable != "/usr/bin/python3" and \
            os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    sys.exit("check.py: no yaml module: install python3-yaml "
             "(scripts/deps.sh)")

CASM_SERVICES = ("broker", "gateway", "validator", "worker", "publisher",
                 "dwh")
FAILURES = []


def fail(message):
    FAILURES.append(message)


def casm_variables(source_dir):
    """Every environment variable a casm process reads, from the sources
    (casm_config_str/int/bool ("NAME", ...) and getenv ("NAME"))."""
    names = set()
    pattern = re.compile(r'(?:casm_config_(?:str|int|bool)|getenv)'
                         r'\s*\(\s*"([A-Z0-9_]+)"')
    for root, dirs, files in os.walk(source_dir):
        dirs[:] = [d for d in dirs if not d.startswith((".", "build"))
                   and d not in ("tests", "node_modules")]
        for name in files:
            if name.endswith(".c"):
                with open(os.path.join(root, name), errors="replace") as f:
                    names.update(pattern.findall(f.read()))
    return names


def seconds(text):
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?",
                         str(text))
    if not match or not any(match.groups()):
        return None
    m, s, ms = match.groups()
    return int(m or 0) * 60 + float(s or 0) + int(ms or 0) / 1000


def check_compose(source_dir):
    path = os.path.join(source_dir, "compose.yaml")
    quiet = subprocess.run(["docker-compose", "-f", path, "config", "-q"],
                           capture_output=True, text=True)
    if quiet.returncode != 0:
        fail("docker-compose config -q refuses compose.yaml:\n"
             + quiet.stderr)
        return
    resolved = subprocess.run(["docker-compose", "-f", path, "config"],
                              capture_output=True, text=True, check=True)
    config = yaml.safe_load(resolved.stdout)
    services = config.get("services", {})

    for name, service in services.items():
        if "container_name" in service:
            fail("%s has a container_name: it could not scale" % name)
        if service.get("ports") and name != "gateway":
            fail("%s publishes a port; only the gateway may" % name)

    postgres = services.get("postgres", {})
    if not str(postgres.get("image", "")).startswith("postgres:16"):
        fail("no PostgreSQL 16 service named postgres")
    kafka = services.get("kafka", {})
    if not str(kafka.get("image", "")).startswith("apache/kafka:"):
        fail("no Apache Kafka service named kafka")
    roles = str(kafka.get("environment", {}).get("KAFKA_PROCESS_ROLES", ""))
    if set(roles.split(",")) != {"broker", "controller"}:
        fail("kafka is not one KRaft node (KAFKA_PROCESS_ROLES=%r)" % roles)
    for name in ("postgres", "kafka"):
        if not services.get(name, {}).get("healthcheck", {}).get("test"):
            fail("%s has no healthcheck" % name)

    migrations = [n for n, s in services.items()
                  if "--migrate-only" in (s.get("command") or [])]
    if len(migrations) != 1:
        fail("not exactly one one-shot migration service: %s" % migrations)

    known = casm_variables(source_dir)
    image = services.get("gateway", {}).get("image")
    for name, service in services.items():
        if service.get("image") != image:
            continue
        env = service.get("environment", {})
        unknown = set(env) - known
        if unknown:
            fail("%s sets variables no casm process reads: %s"
                 % (name, sorted(unknown)))
        build = service.get("build", {})
        if os.path.realpath(build.get("context", "")) != \
                os.path.realpath(source_dir):
            fail("%s is not built from this tree's Dockerfile" % name)

    for name in CASM_SERVICES:
        service = services.get(name)
        if service is None:
            fail("no service %s" % name)
            continue
        if service.get("image") != image:
            fail("%s does not run the casm image" % name)
        env = service.get("environment", {})
        grace = int(env.get("SHUTDOWN_GRACE_MS", 10000)) / 1000
        stop = seconds(service.get("stop_grace_period", "10s"))
        if stop is None or stop <= grace:
            fail("%s: stop_grace_period %s is not above SHUTDOWN_GRACE_MS"
                 % (name, service.get("stop_grace_period")))
        if name != "dwh" and env.get("BROKER_HOST") != "broker":
            fail("%s: BROKER_HOST is not broker" % name)
        if name in ("validator", "worker", "publisher", "dwh") and \
                "@postgres:" not in str(env.get("DATABASE_URL", "")):
            fail("%s: DATABASE_URL does not name postgres" % name)
        if name in ("publisher", "dwh") and \
                not str(env.get("KAFKA_BROKERS", "")).startswith("kafka:"):
            fail("%s: KAFKA_BROKERS does not name kafka" % name)

        depends = service.get("depends_on", {})
        if name != "broker" and not depends:
            fail("%s depends on nothing" % name)
        for other, how in depends.items():
            condition = how.get("condition")
            if condition not in ("service_healthy",
                                 "service_completed_successfully"):
                fail("%s depends on %s only being started" % (name, other))
            if condition == "service_healthy" and \
                    not services.get(other, {}).get("healthcheck"):
                fail("%s waits for %s to be healthy, which has no "
                     "healthcheck" % (name, other))
        if name in ("validator", "worker", "publisher") and migrations \
                and migrations[0] not in depends:
            fail("%s does not wait for the migration" % name)

    if services.get("broker", {}).get("environment", {}).get(
            "BROKER_BIND") != "0.0.0.0":
        fail("the broker does not bind 0.0.0.0")
    if services.get("gateway", {}).get("environment", {}).get(
            "HTTP_BIND") != "0.0.0.0":
        fail("the gateway does not bind 0.0.0.0")
    if not services.get("gateway", {}).get("ports"):
        fail("the gateway publishes no port")


def dockerfile_stages(text):
    """[(from line, [instructions])] with continuation lines joined."""
    lines = []
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            lines.append(re.sub(r"\s+", " ", line))
    stages = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append((line, []))
        elif stages:
            stages[-1][1].append(line)
    return stages


def deps_build_packages(source_dir):
    """The packages of scripts/deps.sh's BUILD_PACKAGES array."""
    with open(os.path.join(source_dir, "scripts", "deps.sh")) as f:
        match = re.search(r"^BUILD_PACKAGES=\((.*?)\)", f.read(),
                          re.M | re.S)
    if not match:
        fail("scripts/deps.sh has no BUILD_PACKAGES")
        return set()
    return set(re.sub(r"#.*", "", match.group(1)).split())


def library_package(path):
    """The Debian package that holds the library at path, or None. dpkg
    knows each file by the path its package installed it at, which on a
    merged /usr may be the one without /usr, or the link's."""
    candidates = []
    for candidate in (path, os.path.realpath(path)):
        candidates.append(candidate)
        if candidate.startswith("/usr/"):
            candidates.append(candidate[len("/usr"):])
    for candidate in candidates:
        owner = subprocess.run(["dpkg", "-S", candidate],
                               capture_output=True, text=True)
        if owner.returncode == 0:
            return owner.stdout.split(":")[0]
    return None


def check_dockerfile(source_dir, build_dir):
    with open(os.path.join(source_dir, "Dockerfile")) as f:
        stages = dockerfile_stages(f.read())
    if len(stages) < 2:
        fail("the Dockerfile is not multi-stage")
        return
    if not re.match(r"FROM debian:bookworm\b", stages[0][0]):
        fail("the build stage is not Debian bookworm: %s" % stages[0][0])
    if not re.match(r"FROM debian:bookworm(-slim)?\b", stages[-1][0]):
        fail("the final stage is not Debian bookworm: %s" % stages[-1][0])

    # The build steps are make's: deps.sh, then make build.
    runs = [i for i in stages[0][1] if i.startswith("RUN ")]
    if not any(re.search(r"(^|\s)scripts/deps\.sh(\s|$)", r) for r in runs):
        fail("the build stage does not run scripts/deps.sh")
    if not any(re.search(r"(^|\s)make build(\s|$)", r) for r in runs):
        fail("the build stage does not run make build")
    with open(os.path.join(source_dir, "Makefile")) as f:
        makefile = f.read()
    if not re.search(r"^build:.*\n(\t.*\n)*\tcmake -S", makefile, re.M):
        fail("make build no longer runs cmake: recheck the Dockerfile")

    # What CMake needs at configure time comes from deps.sh's build
    # packages, the only ones the build stage installs.
    build_packages = deps_build_packages(source_dir)
    cmake_files = []
    for root, dirs, files in os.walk(source_dir):
        dirs[:] = [d for d in dirs if not d.startswith((".", "build"))
                   and d != "node_modules"]
        if "CMakeLists.txt" in files:
            with open(os.path.join(root, "CMakeLists.txt")) as f:
                cmake_files.append(f.read())
    cmake = "\n".join(cmake_files)
    for module in sorted(set(re.findall(
            r"pkg_check_modules\s*\([^)]*IMPORTED_TARGET\s+([\w.+-]+)",
            cmake))):
        pc = subprocess.run(["pkg-config", "--path", module],
                            capture_output=True, text=True).stdout.strip()
        package = library_package(pc) if pc else None
        if package is None:
            fail("no Debian package provides pkg-config's %s" % module)
        elif package not in build_packages:
            fail("CMake needs %s from %s, which `deps.sh build` does not "
                 "install" % (module, package))
    for program in re.findall(r"find_program\s*\(\s*\w+\s+NAMES\s+"
                              r"([\w.+-]+)[^)]*REQUIRED", cmake):
        if program not in build_packages:
            fail("CMake needs the program %s, and `deps.sh build` does not "
                 "install a package of that name" % program)

    # Every program CMake builds is in the image.
    copies = " ".join(i for i in stages[-1][1] if i.startswith("COPY "))
    programs = {}
    for root, dirs, files in os.walk(source_dir):
        dirs[:] = [d for d in dirs if not d.startswith((".", "build"))
                   and d not in ("tests", "node_modules")]
        if "CMakeLists.txt" in files:
            with open(os.path.join(root, "CMakeLists.txt")) as f:
                for name in re.findall(r"add_executable\s*\(\s*(casm-[\w-]+)",
                                       f.read()):
                    programs[name] = os.path.relpath(root, source_dir)
    if not programs:
        fail("found no casm programs in the CMake files")
    for name, directory in sorted(programs.items()):
        if not re.search(r"/%s/%s(\s|$)" % (re.escape(directory),
                                             re.escape(name)), copies):
            fail("the image lacks %s (%s/%s)" % (name, directory, name))

    # The package of every shared library the programs load directly.
    installs = " ".join(i for i in stages[-1][1] if i.startswith("RUN "))
    packages = set(re.findall(r"\b(lib[\w.+-]+)", installs))
    if not build_dir:
        return
    cache = subprocess.run(["ldconfig", "-p"], capture_output=True,
                           text=True).stdout
    for name, directory in sorted(programs.items()):
        binary = os.path.join(build_dir, directory, name)
        if not os.path.exists(binary):
            fail("%s is not built: build first" % binary)
            continue
        dynamic = subprocess.run(["readelf", "-d", binary],
                                 capture_output=True, text=True).stdout
        for library in re.findall(r"\(NEEDED\).*\[(.+)\]", dynamic):
            match = re.search(r"^\s*%s \(.*\) => (\S+)$"
                              % re.escape(library), cache, re.M)
            if not match:
                fail("%s: %s is not in the library cache" % (name, library))
                continue
            package = library_package(match.group(1))
            if package is None:
                fail("%s: no Debian package has %s" % (name, library))
            elif package not in packages and package != "libc6":
                fail("%s loads %s from %s, which the image does not "
                     "install" % (name, library, package))


def main():
    if len(sys.argv) not in (3, 4) or \
            sys.argv[1] not in ("compose", "dockerfile"):
        sys.exit("usage: check.py compose|dockerfile SOURCE_DIR "
                 "[BUILD_DIR]")
    what, source_dir = sys.argv[1], os.path.abspath(sys.argv[2])
    build_dir = sys.argv[3] if len(sys.argv) == 4 else None
    if what == "compose":
        check_compose(source_dir)
    else:
        check_dockerfile(source_dir, build_dir)
    for message in FAILURES:
        print("FAIL: %s" % message)
    print("%s: %s" % (what, "%d problems" % len(FAILURES) if FAILURES
                      else "ok"))
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
