/* Fuzzes the parser of the upload session records in the state dir (agent/sessions.c: cJSON + the checks of
 * every field), and the formatting of what it accepted, which must parse back. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/sessions.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        NbSessionRecord r = {0};
        NbError e = {0};
        if (nb_session_record_parse((const char *)data, size, &r, &e) < 0)
                return 0;
        char *again = nb_session_record_format(&r);
        if (again) {
                NbSessionRecord r2 = {0};
                if (nb_session_record_parse(again, strlen(again), &r2, &e) < 0 || r2.n != r.n)
                        abort();
                nb_session_record_done(&r2);
                free(again);
        }
        nb_session_record_done(&r);
        return 0;
}
