/* error-body.c: the registry's error bodies, turned into one line a person can act on. */
#include <ctype.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "registry/registry-internal.h"

/* Appends s (at most n bytes) to msg: control characters become spaces, a cut never splits a UTF-8
 * sequence, and a cut is marked with "...". */
static void msg_append(char *msg, size_t size, const char *s, size_t n)
{
        size_t len = strnlen(msg, size);
        if (size < 4 || len >= size - 1)
                return;
        size_t room = size - 1 - len, take = n;
        bool cut = n > room;
        if (cut) {
                take = room > 3 ? room - 3 : 0;
                while (take > 0 && ((unsigned char)s[take] & 0xC0) == 0x80)
                        take--;
        }
        for (size_t i = 0; i < take; i++) {
                unsigned char ch = (unsigned char)s[i];
                msg[len + i] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
        }
        msg[len + take] = 0;
        if (cut && size - 1 - (len + take) >= 3)
                memcpy(msg + len + take, "...", 4);
}

static void msg_append_str(char *msg, size_t size, const char *s)
{
        msg_append(msg, size, s, strlen(s));
}

static void error_append_one(const cJSON *err, char *msg, size_t size)
{
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(err, "code");
        const cJSON *message = cJSON_GetObjectItemCaseSensitive(err, "message");
        const cJSON *detail = cJSON_GetObjectItemCaseSensitive(err, "detail");
        if (cJSON_IsString(code)) {
                msg_append_str(msg, size, code->valuestring);
                msg_append_str(msg, size, ": ");
        }
        if (cJSON_IsString(message))
                msg_append_str(msg, size, message->valuestring);
        if (detail && !cJSON_IsNull(detail)) {
                _cleanup_free_ char *d = cJSON_IsString(detail) ? NULL : cJSON_PrintUnformatted(detail);
                const char *ds = cJSON_IsString(detail) ? detail->valuestring : d;
                if (ds && *ds) {
                        msg_append_str(msg, size, " (");
                        msg_append(msg, size, ds, strnlen(ds, 200));
                        msg_append_str(msg, size, ")");
                }
        }
}

/* {"errors":[...]} from distribution, or {"error":..,"error_description":..} from token servers, or
 * {"message":..}. Returns false when the JSON has none of these. */
static bool error_json(const cJSON *j, char *code, size_t code_size, char *msg, size_t size)
{
        const cJSON *errors = cJSON_GetObjectItemCaseSensitive(j, "errors");
        if (cJSON_IsArray(errors) && cJSON_GetArraySize(errors) > 0) {
                int i = 0;
                const cJSON *err;
                cJSON_ArrayForEach(err, errors)
                {
                        if (i == 0 && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(err, "code")))
                                snprintf(code, code_size, "%s",
                                         cJSON_GetObjectItemCaseSensitive(err, "code")->valuestring);
                        if (i++ > 0)
                                msg_append_str(msg, size, "; ");
                        error_append_one(err, msg, size);
                        if (i >= 4)
                                break;
                }
                return true;
        }
        const char *keys[] = {"error", "error_description", "message", "details"};
        bool any = false;
        for (size_t k = 0; k < ELEMENTSOF(keys); k++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, keys[k]);
                if (!cJSON_IsString(v))
                        continue;
                if (any)
                        msg_append_str(msg, size, ": ");
                msg_append_str(msg, size, v->valuestring);
                any = true;
        }
        return any;
}

void reg_error_body_parse(const char *body, size_t size, const char *content_type, char *code,
                          size_t code_size, char *msg, size_t msg_size)
{
        char scratch[REG_MESSAGE_MAX + 1];
        if (code_size)
                code[0] = 0;
        if (!msg || !msg_size) {
                /* only the code is wanted */
                msg = scratch;
                msg_size = sizeof(scratch);
        }
        msg[0] = 0;
        if (msg_size > REG_MESSAGE_MAX + 1)
                msg_size = REG_MESSAGE_MAX + 1;
        if (!body)
                size = 0;
        size_t skip = 0;
        while (skip < size && isspace((unsigned char)body[skip]))
                skip++;
        if (skip == size)
                return;
        if (body[skip] == '<' || (content_type && strcasestr(content_type, "html"))) {
                msg_append_str(msg, msg_size, "(an HTML page instead of an API answer)");
                return;
        }
        if (body[skip] == '{') {
                _cleanup_cjson_ cJSON *j = cJSON_ParseWithLength(body, size);
                if (j && error_json(j, code, code_size, msg, msg_size))
                        return;
                msg[0] = 0;
        }
        /* Plain text: its first line. */
        size_t n = 0;
        while (skip + n < size && body[skip + n] != '\n' && body[skip + n] != '\r' && body[skip + n])
                n++;
        msg_append(msg, msg_size, body + skip, n);
}
