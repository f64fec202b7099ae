/* Fuzzes the create-image request body reader (agent/request.c) and the defaults applied after it. */
#include <stdint.h>
#include <string.h>

#include "agent/request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        NbCreateRequest r = {0};
        NbError e = {0};
        if (nb_create_request_parse((const char *)data, size, &r, &e) >= 0) {
                (void)nb_create_request_defaults(&r, "atelier-auto", "swr.example.com/team/pytorch:1.4",
                                                 1671786468811, &e);
                nb_create_request_done(&r);
        }
        return 0;
}
