/*  fuzz_msg: the internal message format (shared/casm_msg.h).

    Two inputs in one. The whole input is a header frame for
    casm_header_decode; it is also cut into frames (each a length byte then
    that many bytes, the last one cut short where the input ends) to make a
    whole message for casm_work_take, as a stage would receive it from the
    broker, and for casm_bundle_unpack, as any receiver would.

    Properties: a header that decodes encodes back to one that decodes to
    the same fields; a message that is taken apart can be answered, and
    the answer's envelope is the one received; a bundle is refused whole
    or unpacked into units that hold its frames, in order, and nothing
    else; a message that is not a bundle is one unit, itself.              */

#include "fuzz.h"
#include "casm_bundle.h"
#include "casm_log.h"
#include "casm_msg.h"

#include <string.h>

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
    setenv ("LOG_LEVEL", "error", 1);
    casm_log_init ("fuzz_msg", NULL);
    return 0;
}

static void
s_header_eq (const casm_header_t *a, const casm_header_t *b)
{
    FUZZ_CHECK (a->version == b->version && a->kind == b->kind
                && a->op == b->op && a->flags == b->flags
                && a->status == b->status
                && a->deadline_ms == b->deadline_ms);
    FUZZ_CHECK (strcmp (a->request_id, b->request_id) == 0);
    FUZZ_CHECK (strcmp (a->trace_id, b->trace_id) == 0);
}

static void
s_header (const uint8_t *data, size_t size)
{
    zframe_t *frame = zframe_new (data, size);
    casm_header_t header;
    int rc = casm_header_decode (frame, &header);
    FUZZ_CHECK (rc == 0 || rc == -1 || rc == -2);
    if (rc == -2)
        FUZZ_CHECK (size > 0 && header.version == data [0]
                    && header.version != CASM_MSG_VERSION);
    if (rc == 0) {
        FUZZ_CHECK (strlen (header.request_id) <= CASM_REQUEST_ID_MAX);
        FUZZ_CHECK (strlen (header.trace_id) <= CASM_TRACE_ID_MAX);
        zframe_t *again = casm_header_encode (&header);
        casm_header_t copy;
        FUZZ_CHECK (casm_header_decode (again, &copy) == 0);
        s_header_eq (&header, &copy);
        zframe_destroy (&again);
    }
    zframe_destroy (&frame);
}

//  The input cut into at most limit frames.
static zmsg_t *
s_frames (const uint8_t *data, size_t size, size_t limit)
{
    zmsg_t *msg = zmsg_new ();
    size_t at = 0;
    while (at < size && zmsg_size (msg) < limit) {
        size_t length = data [at++];
        if (length > size - at)
            length = size - at;
        zmsg_addmem (msg, data + at, length);
        at += length;
    }
    return msg;
}

static void
s_bundle (const uint8_t *data, size_t size)
{
    zmsg_t *msg = s_frames (data, size, 64);
    zmsg_t *copy = zmsg_dup (msg);
    bool bundle = casm_bundle_is (msg);
    casm_bundle_t *units = casm_bundle_new ();
    int count = casm_bundle_unpack (units, &msg, NULL);
    FUZZ_CHECK (!msg);
    FUZZ_CHECK (count == -1 || (size_t) count == casm_bundle_size (units));
    if (count < 0)
        FUZZ_CHECK ((bundle || zmsg_size (copy) == 0)
                    && casm_bundle_size (units) == 0);
    if (count > 0 && !bundle)
        FUZZ_CHECK (count == 1);

    //  The units' frames, one after another, are the input's frames after
    //  the bundle's first two.
    zframe_t *expected = zmsg_first (copy);
    if (count > 0 && bundle) {
        zmsg_next (copy);
        expected = zmsg_next (copy);
    }
    zmsg_t *unit;
    while ((unit = casm_bundle_pop (units))) {
        FUZZ_CHECK (zmsg_size (unit) >= 1);
        for (zframe_t *frame = zmsg_first (unit); frame;
             frame = zmsg_next (unit)) {
            FUZZ_CHECK (expected && zframe_eq (frame, expected));
            expected = zmsg_next (copy);
        }
        zmsg_destroy (&unit);
    }
    if (count >= 0)
        FUZZ_CHECK (!expected);
    casm_bundle_destroy (&units);
    zmsg_destroy (&copy);
}

static void
s_message (const uint8_t *data, size_t size)
{
    zmsg_t *msg = s_frames (data, size, 16);

    zmsg_t *copy = zmsg_dup (msg);
    casm_work_t *work = casm_work_take (&msg);
    FUZZ_CHECK (!msg);
    if (work) {
        size_t body_size = 0;
        const char *body = casm_work_body (work, &body_size);
        FUZZ_CHECK (body_size == 0 || body);

        //  The answer carries the envelope as it came, then the header,
        //  then the body.
        size_t envelope = zmsg_size (work->envelope);
        FUZZ_CHECK (envelope >= 1
                    && zframe_size (zmsg_last (work->envelope)) == 0);
        zmsg_t *answer = casm_work_message (work, NULL, &work->header,
                                            "{}", 2, NULL, 0);
        FUZZ_CHECK (zmsg_size (answer) == envelope + 2);
        zframe_t *sent = zmsg_first (answer);
        zframe_t *received = zmsg_first (copy);
        for (size_t i = 0; i < envelope; i++) {
            FUZZ_CHECK (zframe_eq (sent, received));
            sent = zmsg_next (answer);
            received = zmsg_next (copy);
        }
        zmsg_destroy (&answer);
        casm_work_destroy (&work);
        FUZZ_CHECK (!work);
    }
    zmsg_destroy (&copy);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    s_header (data, size);
    s_message (data, size);
    s_bundle (data, size);
    return 0;
}
