/* Fuzzes nbsnapd's config reader (agent/config.c: libinih + the key table) and the checks after it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size > NB_CONFIG_FILE_MAX)
                return 0;
        char *text = malloc(size + 1);
        if (!text)
                return 0;
        memcpy(text, data, size);
        text[size] = '\0';
        NbConfig c;
        NbError e = {0};
        nb_config_init(&c);
        if (nb_config_parse_string(&c, text, &e) >= 0)
                (void)nb_config_check(&c, &e);
        nb_config_done(&c);
        free(text);
        return 0;
}
