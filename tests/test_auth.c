/*  test_auth: who may come in. API keys (gateway/casm_auth.h), receive
    deadlines against slow clients (gateway/casm_guard.h) and CURVE with
    the broker's allow-list (shared/casm_curve.h).

    The key file must accept exactly the documented lines and refuse the
    rest, a reload that fails must leave the keys in force, and every
    malformed Authorization value must be refused like a wrong key. CURVE
    is tested on real TCP sockets: a client whose key is on the list gets
    its message through, one whose key is not gets nothing through, until
    the list is reloaded with its key.                                    */

#include "casm_auth.h"
#include "casm_curve.h"
#include "casm_guard.h"
#include "casm_log.h"

#include <check.h>
#include <ctype.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char s_dir [64];

static void
s_setup (void)
{
    setenv ("LOG_LEVEL", "error", 1);
    casm_log_init ("test_auth", NULL);
    snprintf (s_dir, sizeof s_dir, "/tmp/casm-test-auth-XXXXXX");
    ck_assert_ptr_nonnull (mkdtemp (s_dir));
    unsetenv ("CURVE_SERVER_SECRET");
    unsetenv ("CURVE_SERVER_PUBLIC");
    unsetenv ("CURVE_CLIENT_SECRET");
    unsetenv ("CURVE_CLIENT_PUBLIC");
}

static void
s_teardown (void)
{
    char command [128];
    snprintf (command, sizeof command, "rm -rf %s", s_dir);
    ck_assert_int_eq (system (command), 0);
}

//  Writes text to name in the test's directory; returns the path (static).
static const char *
s_file (const char *name, const char *text)
{
    static char path [128];
    snprintf (path, sizeof path, "%s/%s", s_dir, name);
    FILE *file = fopen (path, "w");
    ck_assert_ptr_nonnull (file);
    fputs (text, file);
    fclose (file);
    return path;
}

//  The hex SHA-256 of key, as API_KEYS_FILE spells it (static).
static const char *
s_hash (const char *key)
{
    static char hex [2 * SHA256_DIGEST_SIZE + 1];
    uint8_t digest [SHA256_DIGEST_SIZE];
    struct sha256_ctx context;
    sha256_init (&context);
    sha256_update (&context, strlen (key), (const uint8_t *) key);
    sha256_digest (&context, sizeof digest, digest);
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++)
        snprintf (hex + 2 * i, 3, "%02x", digest [i]);
    return hex;
}

static const char *
s_check (casm_auth_t *auth, const char *value)
{
    return casm_auth_check (auth, value, value ? strlen (value) : 0);
}

//  A table with keys "alpha-key" (label crm) and "beta-key" (billing).
static casm_auth_t *
s_table (void)
{
    char alpha [2 * SHA256_DIGEST_SIZE + 1];
    snprintf (alpha, sizeof alpha, "%s", s_hash ("alpha-key"));
    char text [512];
    snprintf (text, sizeof text,
              "# the CRM\n"
              "\n"
              "   crm %s\n"
              "\t# billing, upper-case hex, CRLF\r\n"
              "billing %s\r\n", alpha, s_hash ("beta-key"));
    for (char *c = strstr (text, "billing ") + 8; *c != '\r'; c++)
        *c = (char) toupper (*c);
    casm_auth_t *auth = casm_auth_new (s_file ("keys", text));
    ck_assert_ptr_nonnull (auth);
    return auth;
}


//  --------------------------------------------------------------------
//  API keys

START_TEST (test_keys_file_accepted)
{
    casm_auth_t *auth = s_table ();
    ck_assert_uint_eq (casm_auth_size (auth), 2);
    ck_assert_str_eq (s_check (auth, "Bearer alpha-key"), "crm");
    ck_assert_str_eq (s_check (auth, "Bearer beta-key"), "billing");
    casm_auth_destroy (&auth);
    ck_assert_ptr_null (auth);
}
END_TEST

START_TEST (test_keys_file_refused)
{
    const char *hash = s_hash ("k");
    char text [256];
    const char *shapes [] = {
        "crm\n",                                  // no hash
        "crm %s extra\n",                         // three fields
        "crm %.63s\n",                            // 63 digits
        "crm %sa\n",                              // 65 digits
        "cr/m %s\n",                              // bad label
        "crm %.62szz\n",                          // not hex
        "# only a comment\n\n",                   // no key at all
        "",                                       // empty
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes [0]; i++) {
        snprintf (text, sizeof text, shapes [i], hash);
        ck_assert_msg (casm_auth_new (s_file ("keys", text)) == NULL,
                       "accepted shape %zu: %s", i, text);
    }

    char long_label [200];
    memset (long_label, 'a', 65);
    long_label [65] = 0;
    snprintf (text, sizeof text, "%s %s\n", long_label, hash);
    ck_assert_ptr_null (casm_auth_new (s_file ("keys", text)));

    char missing [160];
    snprintf (missing, sizeof missing, "%s/none", s_dir);
    ck_assert_ptr_null (casm_auth_new (missing));
    ck_assert_ptr_null (casm_auth_new (NULL));
}
END_TEST

START_TEST (test_header_forms)
{
    casm_auth_t *auth = s_table ();

    //  Accepted: the scheme in any case, spaces around the key.
    ck_assert_str_eq (s_check (auth, "bearer alpha-key"), "crm");
    ck_assert_str_eq (s_check (auth, "BEARER alpha-key"), "crm");
    ck_assert_str_eq (s_check (auth, "Bearer    alpha-key"), "crm");
    ck_assert_str_eq (s_check (auth, "Bearer alpha-key  \t"), "crm");

    //  Refused: missing, other schemes, no key, wrong or near keys, keys
    //  with characters a token68 cannot have.
    const char *refused [] = {
        NULL, "", "Bearer", "Bearer ", "Bearer   ", "Basic alpha-key",
        "Bearer\talpha-key", "Beareralpha-key", " Bearer alpha-key",
        "Bearer alpha-ke", "Bearer alpha-keyy", "Bearer Alpha-key",
        "Bearer alpha-key x", "Bearer alpha key", "Bearer alpha-key,",
        "Bearer \"alpha-key\"", "Bearer =alpha-key", "Bearer alpha-key=x",
        "Bearer wrong",
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused [0]; i++)
        ck_assert_msg (s_check (auth, refused [i]) == NULL,
                       "accepted \"%s\"", refused [i]);

    //  A NUL inside the value is not the end of it.
    const char nul [] = "Bearer alpha-key\0x";
    ck_assert_ptr_null (casm_auth_check (auth, nul, sizeof nul - 1));
    casm_auth_destroy (&auth);
}
END_TEST

START_TEST (test_key_length)
{
    //  Padding is part of the key; a key of the longest length works, one
    //  character more is refused before any hashing.
    char key [CASM_AUTH_KEY_MAX + 2];
    memset (key, 'k', sizeof key);
    key [CASM_AUTH_KEY_MAX - 1] = '=';
    key [CASM_AUTH_KEY_MAX] = 0;

    char text [256];
    snprintf (text, sizeof text, "long %s\n", s_hash (key));
    casm_auth_t *auth = casm_auth_new (s_file ("keys", text));
    ck_assert_ptr_nonnull (auth);

    char value [CASM_AUTH_KEY_MAX + 16];
    snprintf (value, sizeof value, "Bearer %s", key);
    ck_assert_str_eq (s_check (auth, value), "long");
    snprintf (value, sizeof value, "Bearer k%s", key);
    ck_assert_ptr_null (s_check (auth, value));
    casm_auth_destroy (&auth);
}
END_TEST

START_TEST (test_one_label_two_keys)
{
    //  Rotation: the old and the new key of one client, both accepted.
    char text [256];
    snprintf (text, sizeof text, "crm %s\n", s_hash ("old-key"));
    snprintf (text + strlen (text), sizeof text - strlen (text),
              "crm %s\n", s_hash ("new-key"));
    casm_auth_t *auth = casm_auth_new (s_file ("keys", text));
    ck_assert_ptr_nonnull (auth);
    ck_assert_str_eq (s_check (auth, "Bearer old-key"), "crm");
    ck_assert_str_eq (s_check (auth, "Bearer new-key"), "crm");
    casm_auth_destroy (&auth);
}
END_TEST

START_TEST (test_reload)
{
    casm_auth_t *auth = s_table ();

    //  A new file replaces the keys.
    char text [256];
    snprintf (text, sizeof text, "crm %s\n", s_hash ("gamma-key"));
    s_file ("keys", text);
    ck_assert_int_eq (casm_auth_reload (auth), 0);
    ck_assert_uint_eq (casm_auth_size (auth), 1);
    ck_assert_str_eq (s_check (auth, "Bearer gamma-key"), "crm");
    ck_assert_ptr_null (s_check (auth, "Bearer alpha-key"));

    //  A broken, empty or missing file keeps them.
    s_file ("keys", "crm not-a-hash\n");
    ck_assert_int_eq (casm_auth_reload (auth), -1);
    ck_assert_str_eq (s_check (auth, "Bearer gamma-key"), "crm");
    s_file ("keys", "");
    ck_assert_int_eq (casm_auth_reload (auth), -1);
    ck_assert_str_eq (s_check (auth, "Bearer gamma-key"), "crm");
    char path [160];
    snprintf (path, sizeof path, "%s/keys", s_dir);
    ck_assert_int_eq (unlink (path), 0);
    ck_assert_int_eq (casm_auth_reload (auth), -1);
    ck_assert_str_eq (s_check (auth, "Bearer gamma-key"), "crm");
    casm_auth_destroy (&auth);
}
END_TEST


//  --------------------------------------------------------------------
//  Receive deadlines

START_TEST (test_guard_order)
{
    casm_guard_t *guard = casm_guard_new (1000);
    ck_assert_int_eq (casm_guard_next_deadline (guard), INT64_MAX);
    ck_assert_int_eq (casm_guard_expired (guard, INT64_MAX - 1), -1);

    casm_guard_conn_t *a = casm_guard_open (guard, 10, 0);
    casm_guard_conn_t *b = casm_guard_open (guard, 11, 100);
    casm_guard_conn_t *c = casm_guard_open (guard, 12, 200);
    ck_assert_uint_eq (casm_guard_size (guard), 3);
    ck_assert_uint_eq (casm_guard_armed (guard), 3);
    ck_assert_int_eq (casm_guard_next_deadline (guard), 1000);

    //  a's request arrived; b is past its deadline first, once.
    casm_guard_disarm (guard, a);
    ck_assert_int_eq (casm_guard_next_deadline (guard), 1100);
    ck_assert_int_eq (casm_guard_expired (guard, 1099), -1);
    ck_assert_int_eq (casm_guard_expired (guard, 1100), 11);
    ck_assert_int_eq (casm_guard_expired (guard, 1100), -1);

    //  a was answered: its next deadline comes after c's.
    casm_guard_arm (guard, a, 500);
    ck_assert_int_eq (casm_guard_expired (guard, 5000), 12);
    ck_assert_int_eq (casm_guard_expired (guard, 5000), 10);
    ck_assert_int_eq (casm_guard_expired (guard, 5000), -1);
    ck_assert_uint_eq (casm_guard_armed (guard), 0);

    casm_guard_close (guard, &a);
    casm_guard_close (guard, &b);
    casm_guard_close (guard, &c);
    ck_assert_ptr_null (a);
    ck_assert_uint_eq (casm_guard_size (guard), 0);
    casm_guard_destroy (&guard);
    ck_assert_ptr_null (guard);
}
END_TEST

START_TEST (test_guard_close_armed)
{
    //  Closing an armed connection takes it off the list; destroying
    //  frees what is still armed.
    casm_guard_t *guard = casm_guard_new (50);
    casm_guard_conn_t *a = casm_guard_open (guard, 1, 0);
    casm_guard_conn_t *b = casm_guard_open (guard, 2, 10);
    casm_guard_conn_t *c = casm_guard_open (guard, 3, 20);
    casm_guard_close (guard, &b);
    ck_assert_int_eq (casm_guard_expired (guard, 100), 1);
    ck_assert_int_eq (casm_guard_expired (guard, 100), 3);
    casm_guard_arm (guard, a, 200);
    casm_guard_arm (guard, a, 300);       // re-arming moves it, once
    ck_assert_uint_eq (casm_guard_armed (guard), 1);
    ck_assert_int_eq (casm_guard_next_deadline (guard), 350);

    //  A "now" older than the last deadline's start keeps the order.
    casm_guard_conn_t *d = casm_guard_open (guard, 4, 100);
    ck_assert_int_eq (casm_guard_expired (guard, 350), 1);
    ck_assert_int_eq (casm_guard_expired (guard, 350), 4);
    casm_guard_close (guard, &d);
    casm_guard_close (guard, &c);
    casm_guard_arm (guard, a, 400);
    casm_guard_destroy (&guard);
}
END_TEST


//  --------------------------------------------------------------------
//  CURVE

typedef struct {
    char public [CASM_CURVE_Z85_SIZE + 1];
    char secret [CASM_CURVE_Z85_SIZE + 1];
} s_pair_t;

static s_pair_t
s_pair (void)
{
    s_pair_t pair;
    ck_assert_int_eq (zmq_curve_keypair (pair.public, pair.secret), 0);
    return pair;
}

START_TEST (test_curve_key_decode)
{
    s_pair_t pair = s_pair ();
    uint8_t key [CASM_CURVE_KEY_SIZE];
    ck_assert (casm_curve_key_decode (pair.public, key));
    ck_assert (casm_curve_key_decode (pair.secret, NULL));
    ck_assert (!casm_curve_key_decode (NULL, NULL));
    ck_assert (!casm_curve_key_decode ("", NULL));
    char text [64];
    snprintf (text, sizeof text, "%.39s", pair.public);
    ck_assert (!casm_curve_key_decode (text, NULL));
    snprintf (text, sizeof text, "%s0", pair.public);
    ck_assert (!casm_curve_key_decode (text, NULL));
    snprintf (text, sizeof text, "%.39s~", pair.public);   // not Z85
    ck_assert (!casm_curve_key_decode (text, NULL));
}
END_TEST

START_TEST (test_curve_off)
{
    zsock_t *socket = zsock_new (ZMQ_DEALER);
    ck_assert (!casm_curve_server_enabled ());
    ck_assert_int_eq (casm_curve_server (socket), 0);
    ck_assert_int_eq (casm_curve_client (socket), 0);
    ck_assert_int_eq (zsock_mechanism (socket), ZMQ_NULL);
    zsock_destroy (&socket);
}
END_TEST

//  Each of these must exit with status 2.
START_TEST (test_curve_client_without_secret)
{
    setenv ("CURVE_SERVER_PUBLIC", s_pair ().public, 1);
    zsock_t *socket = zsock_new (ZMQ_DEALER);
    casm_curve_client (socket);
}
END_TEST

START_TEST (test_curve_client_without_server)
{
    setenv ("CURVE_CLIENT_SECRET", s_pair ().secret, 1);
    zsock_t *socket = zsock_new (ZMQ_DEALER);
    casm_curve_client (socket);
}
END_TEST

START_TEST (test_curve_client_bad_secret)
{
    setenv ("CURVE_SERVER_PUBLIC", s_pair ().public, 1);
    setenv ("CURVE_CLIENT_SECRET", "not a key", 1);
    zsock_t *socket = zsock_new (ZMQ_DEALER);
    casm_curve_client (socket);
}
END_TEST

START_TEST (test_curve_client_public_mismatch)
{
    setenv ("CURVE_SERVER_PUBLIC", s_pair ().public, 1);
    setenv ("CURVE_CLIENT_SECRET", s_pair ().secret, 1);
    setenv ("CURVE_CLIENT_PUBLIC", s_pair ().public, 1);
    zsock_t *socket = zsock_new (ZMQ_DEALER);
    casm_curve_client (socket);
}
END_TEST

START_TEST (test_curve_server_public_mismatch)
{
    setenv ("CURVE_SERVER_SECRET", s_pair ().secret, 1);
    setenv ("CURVE_SERVER_PUBLIC", s_pair ().public, 1);
    zsock_t *socket = zsock_new (ZMQ_ROUTER);
    casm_curve_server (socket);
}
END_TEST

START_TEST (test_curve_allow_list_refused)
{
    s_pair_t pair = s_pair ();
    char text [256];
    const char *shapes [] = {
        "validator %.39s\n", "validator\n", "val/idator %s\n",
        "validator %s extra\n", "# nothing\n", "",
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes [0]; i++) {
        snprintf (text, sizeof text, shapes [i], pair.public);
        ck_assert_msg (casm_curve_auth_new (s_file ("clients", text))
                       == NULL, "accepted shape %zu", i);
    }
    ck_assert_ptr_null (casm_curve_auth_new (NULL));
}
END_TEST

//  A client of the server at port with this key pair: sends "hello".
static zsock_t *
s_client (const s_pair_t *server, const s_pair_t *client, int port)
{
    setenv ("CURVE_SERVER_PUBLIC", server->public, 1);
    setenv ("CURVE_CLIENT_SECRET", client->secret, 1);
    setenv ("CURVE_CLIENT_PUBLIC", client->public, 1);
    zsock_t *dealer = zsock_new (ZMQ_DEALER);
    ck_assert_int_eq (casm_curve_client (dealer), 0);
    ck_assert_int_eq (zsock_mechanism (dealer), ZMQ_CURVE);
    ck_assert_int_eq (zsock_connect (dealer, "tcp://127.0.0.1:%d", port), 0);
    zstr_send (dealer, "hello");
    return dealer;
}

//  Runs the ZAP handler and the server for up to ms milliseconds; returns
//  how many messages the server received.
static int
s_serve (casm_curve_auth_t *auth, zsock_t *router, int ms, int want)
{
    zpoller_t *poller = zpoller_new (casm_curve_auth_socket (auth), router,
                                     NULL);
    int received = 0;
    int64_t until = zclock_mono () + ms;
    while (received < want && zclock_mono () < until) {
        void *which = zpoller_wait (poller, 50);
        if (which == casm_curve_auth_socket (auth))
            casm_curve_auth_handle (auth);
        else
        if (which == router) {
            zmsg_t *msg = zmsg_recv (router);
            char *text = zframe_strdup (zmsg_last (msg));
            ck_assert_str_eq (text, "hello");
            free (text);
            zmsg_destroy (&msg);
            received++;
        }
    }
    zpoller_destroy (&poller);
    return received;
}

START_TEST (test_curve_allow_list)
{
    s_pair_t server = s_pair (), allowed = s_pair (), other = s_pair ();
    char text [256];
    snprintf (text, sizeof text, "# stages\nvalidator-1 %s\n",
              allowed.public);
    const char *path = s_file ("clients", text);

    setenv ("CURVE_SERVER_SECRET", server.secret, 1);
    setenv ("CURVE_SERVER_PUBLIC", server.public, 1);
    casm_curve_auth_t *auth = casm_curve_auth_new (path);
    ck_assert_ptr_nonnull (auth);
    ck_assert_uint_eq (casm_curve_auth_size (auth), 1);
    zsock_t *router = zsock_new (ZMQ_ROUTER);
    ck_assert_int_eq (casm_curve_server (router), 0);
    ck_assert_int_eq (zsock_mechanism (router), ZMQ_CURVE);
    int port = zsock_bind (router, "tcp://127.0.0.1:*");
    ck_assert_int_gt (port, 0);

    //  The key on the list gets through; the other does not, nor does a
    //  client without CURVE, while the allowed one still does.
    zsock_t *good = s_client (&server, &allowed, port);
    ck_assert_int_eq (s_serve (auth, router, 5000, 1), 1);
    zsock_t *bad = s_client (&server, &other, port);
    zsock_t *plain = zsock_new (ZMQ_DEALER);
    ck_assert_int_eq (zsock_connect (plain, "tcp://127.0.0.1:%d", port), 0);
    zstr_send (plain, "hello");
    zstr_send (good, "hello");
    ck_assert_int_eq (s_serve (auth, router, 1500, 2), 1);

    //  A list that does not parse changes nothing; one with the other key
    //  lets it in. (libzmq drops a connection that ZAP refused for good:
    //  the refused process has to connect anew.)
    s_file ("clients", "broken\n");
    ck_assert_int_eq (casm_curve_auth_reload (auth), -1);
    ck_assert_uint_eq (casm_curve_auth_size (auth), 1);
    snprintf (text, sizeof text, "validator-1 %s\nvalidator-2 %s\n",
              allowed.public, other.public);
    s_file ("clients", text);
    ck_assert_int_eq (casm_curve_auth_reload (auth), 0);
    ck_assert_uint_eq (casm_curve_auth_size (auth), 2);
    zsock_destroy (&bad);
    bad = s_client (&server, &other, port);
    ck_assert_int_eq (s_serve (auth, router, 5000, 1), 1);

    zsock_destroy (&good);
    zsock_destroy (&bad);
    zsock_destroy (&plain);
    zsock_destroy (&router);
    casm_curve_auth_destroy (&auth);
    ck_assert_ptr_null (auth);
}
END_TEST

START_TEST (test_curve_wrong_server_key)
{
    //  A client that expects another server key gets nothing through.
    s_pair_t server = s_pair (), impostor = s_pair (), client = s_pair ();
    char text [256];
    snprintf (text, sizeof text, "client %s\n", client.public);
    setenv ("CURVE_SERVER_SECRET", server.secret, 1);
    casm_curve_auth_t *auth = casm_curve_auth_new (s_file ("clients", text));
    zsock_t *router = zsock_new (ZMQ_ROUTER);
    ck_assert_int_eq (casm_curve_server (router), 0);
    int port = zsock_bind (router, "tcp://127.0.0.1:*");

    zsock_t *dealer = s_client (&impostor, &client, port);
    ck_assert_int_eq (s_serve (auth, router, 1500, 1), 0);
    zsock_destroy (&dealer);
    dealer = s_client (&server, &client, port);
    ck_assert_int_eq (s_serve (auth, router, 5000, 1), 1);

    zsock_destroy (&dealer);
    zsock_destroy (&router);
    casm_curve_auth_destroy (&auth);
}
END_TEST

int
main (void)
{
    Suite *suite = suite_create ("casm_auth");

    TCase *keys = tcase_create ("api keys");
    tcase_add_checked_fixture (keys, s_setup, s_teardown);
    tcase_add_test (keys, test_keys_file_accepted);
    tcase_add_test (keys, test_keys_file_refused);
    tcase_add_test (keys, test_header_forms);
    tcase_add_test (keys, test_key_length);
    tcase_add_test (keys, test_one_label_two_keys);
    tcase_add_test (keys, test_reload);
    suite_add_tcase (suite, keys);

    TCase *guard = tcase_create ("receive deadlines");
    tcase_add_test (guard, test_guard_order);
    tcase_add_test (guard, test_guard_close_armed);
    suite_add_tcase (suite, guard);

    TCase *curve = tcase_create ("curve");
    tcase_add_checked_fixture (curve, s_setup, s_teardown);
    tcase_add_test (curve, test_curve_key_decode);
    tcase_add_test (curve, test_curve_off);
    tcase_add_exit_test (curve, test_curve_client_without_secret, 2);
    tcase_add_exit_test (curve, test_curve_client_without_server, 2);
    tcase_add_exit_test (curve, test_curve_client_bad_secret, 2);
    tcase_add_exit_test (curve, test_curve_client_public_mismatch, 2);
    tcase_add_exit_test (curve, test_curve_server_public_mismatch, 2);
    tcase_add_test (curve, test_curve_allow_list_refused);
    tcase_add_test (curve, test_curve_allow_list);
    tcase_add_test (curve, test_curve_wrong_server_key);
    suite_add_tcase (suite, curve);

    SRunner *runner = srunner_create (suite);
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
