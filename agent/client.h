/* client.h: the command line's side of the API: one HTTP request to nbsnapd over its unix socket, with
 * libcurl (CURLOPT_UNIX_SOCKET_PATH), the answer held in memory up to a named limit. */
#pragma once

#include <stddef.h>

#include "common/error.h"

#define NB_CLIENT_RESPONSE_MAX (16u * 1024 * 1024)
#define NB_CLIENT_TIMEOUT_S    60

typedef struct NbResponse {
        long status;
        char *body; /* NUL-terminated */
        size_t size;
} NbResponse;

void nb_response_done(NbResponse *r);
/* body NULL: no body. 0 with the response (any HTTP status), or negative when nbsnapd cannot be reached. */
int nb_client_request(const char *socket_path, const char *method, const char *path, const char *body,
                      NbResponse *ret, NbError *e);
