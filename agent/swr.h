/* swr.h: how the agent names things to the registry (SWR) and to ModelArts, computed in one place for the
 * daemon and the save: the registry host taken from the configured URL, the swr_path of an image
 * ("host/namespace/name:tag"), the ModelArts spelling of an architecture ("X86_64", "AARCH64") from the OCI
 * one that image configs and common/sysinfo.h use ("amd64", "arm64"), and the registry client options every
 * part of the agent starts from (credentials, CA, User-Agent). */
#pragma once

#include <stddef.h>

#include "registry/registry.h"

#define NB_ARCH_MAX 32 /* bytes of an architecture name, NUL included */

/* "host[:port]" of a registry URL "scheme://host[:port]", as reg_client_host() gives it. -EINVAL when url is
 * not one, -ENOMEM. */
int nb_registry_host(const char *url, char **ret);

/* "host/namespace/name:tag", malloc'ed; -ENOMEM. */
int nb_swr_path(const char *host, const char *namespace, const char *name, const char *tag, char **ret);

/* ModelArts spelling of an OCI architecture: amd64 -> X86_64, arm64 -> AARCH64, anything else upper-cased
 * (truncated to NB_ARCH_MAX - 1). Returns buf. */
const char *nb_arch_to_modelarts(const char *oci_arch, char buf[static NB_ARCH_MAX]);
/* This machine's architecture in that spelling (nb_machine_arch() translated). */
const char *nb_machine_arch_modelarts(char buf[static NB_ARCH_MAX]);

/* The options every registry client of the agent starts from: url, authfile, ca_file, nbsnap_user_agent().
 * The rest is zero (the registry's defaults); callers set timeouts, chunk size and cancel flag. */
RegClientOptions nb_reg_client_options(const char *url, const char *authfile, const char *ca_file);
