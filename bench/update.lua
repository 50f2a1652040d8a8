-- wrk script for bench/run.sh: valid updateCustomerCustomAttributes
-- requests, each with a requestId used once and a random customer of the
-- seeded ones (externalId BENCH-1 .. BENCH-<customers>), 10 attributes
-- each.
--
--   wrk ... -s bench/update.lua URL -- RUN_TAG CUSTOMERS [API_KEY]
--
-- RUN_TAG makes the requestIds of this run differ from any other run's;
-- API_KEY, when given, goes in an "Authorization: Bearer" header.
-- Every answer that is not 200 is counted in response(); done() prints
-- one line that bench/run.sh reads:
--
--   casm-bench requests=N duration_us=D p50_us=.. p99_us=.. max_us=..
--       non200=N connect=N read=N write=N timeout=N

local threads = {}
local next_thread = 1

function setup(thread)
    thread:set("thread_id", next_thread)
    next_thread = next_thread + 1
    table.insert(threads, thread)
end

local tag = "run"
local customers = 100000
local counter = 0
non200 = 0

function init(args)
    tag = args[1] or tag
    customers = tonumber(args[2]) or customers
    math.randomseed(os.time() * 1000 + thread_id)
    wrk.method = "PUT"
    wrk.path = "/v1/casm/customers/update-custom-attributes"
    wrk.headers["Content-Type"] = "application/json"
    if args[3] then
        wrk.headers["Authorization"] = "Bearer " .. args[3]
    end
end

local attribute_names = {
    "segmentHint", "preferredChannel", "language", "region", "tier",
    "contractType", "billingCycle", "deviceType", "campaign", "note"
}

function request()
    counter = counter + 1
    local parts = {}
    for i, name in ipairs(attribute_names) do
        parts[i] = string.format('"%s":"v%d-%d"', name,
                                 math.random(0, 999999), i)
    end
    local body = string.format(
        '{"requestId":"%s-%d-%d","customer":{"externalId":"BENCH-%d"},' ..
        '"customAttributes":{%s},"merge":false}',
        tag, thread_id, counter, math.random(1, customers),
        table.concat(parts, ","))
    return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
    if status ~= 200 then
        non200 = non200 + 1
        if non200 <= 3 then
            io.stderr:write(string.format("non-200 answer %d: %s\n",
                                          status, body))
        end
    end
end

function done(summary, latency, requests)
    local non200_total = 0
    for _, thread in ipairs(threads) do
        non200_total = non200_total + (thread:get("non200") or 0)
    end
    local errors = summary.errors
    io.write(string.format(
        "casm-bench requests=%d duration_us=%d p50_us=%d p99_us=%d " ..
        "max_us=%d non200=%d connect=%d read=%d write=%d timeout=%d\n",
        summary.requests, summary.duration, latency:percentile(50),
        latency:percentile(99), latency.max, non200_total,
        errors.connect, errors.read, errors.write, errors.timeout))
end
