/* fuzz-registry-auth.c: WWW-Authenticate challenges, docker config.json / auth.json, token answers,
 * Retry-After and Location resolution. The first byte picks the parser. */
#include <stdint.h>
#include <string.h>

#include "registry/registry-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void one_challenge(const char *s)
{
        RegChallenge c = {0};
        if (reg_challenge_parse(s, &c) >= 0) {
                if (c.scheme != REG_AUTH_BASIC && c.scheme != REG_AUTH_BEARER)
                        abort();
                if (c.scheme == REG_AUTH_BEARER && !c.realm)
                        abort();
                reg_challenge_done(&c);
        }
}

static void one_config(const char *s, size_t n)
{
        RegCredentials c = {0};
        NbError e = {0};
        static const char *const hosts[] = {"reg.example.com", "docker.io", "127.0.0.1:5000"};
        for (size_t i = 0; i < ELEMENTSOF(hosts); i++)
                if (reg_auth_config_parse(s, n, hosts[i], &c, &e) > 0)
                        reg_credentials_done(&c);
}

static void one_token(const char *s, size_t n)
{
        char *t = NULL;
        long exp = 0;
        NbError e = {0};
        if (reg_token_parse(s, n, &t, &exp, &e) >= 0) {
                if (!t || !*t || exp < REG_TOKEN_EXPIRY_MIN_S)
                        abort();
                free(t);
        }
}

static void one_location(const char *s)
{
        char *u = NULL;
        if (reg_url_resolve("https://reg.example.com:5000/v2/a/blobs/uploads/x?_state=y", s, &u) >= 0)
                free(u);
        if (reg_url_add_query("https://reg.example.com/v2/a/blobs/uploads/", "digest", s, &u) >= 0)
                free(u);
        char buf[64];
        (void)reg_url_redact(s, buf, sizeof(buf));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size < 1 || size > 65536)
                return 0;
        char *s = malloc(size);
        if (!s)
                return 0;
        memcpy(s, data + 1, size - 1);
        s[size - 1] = 0;
        unsigned ms;
        switch (data[0] % 5) {
        case 0:
                one_challenge(s);
                break;
        case 1:
                one_config(s, size - 1);
                break;
        case 2:
                one_token(s, size - 1);
                break;
        case 3:
                if (reg_retry_after_parse(s, 1700000000, &ms) >= 0 && ms > REG_RETRY_AFTER_CAP_MS)
                        abort();
                break;
        default:
                one_location(s);
                break;
        }
        free(s);
        return 0;
}
