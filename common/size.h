/* size.h: byte sizes as people write them in flags and config files ("10G", "512M", "1048576") and as
 * messages show them ("1.5 GiB"). Suffixes K, M, G and T are powers of 1024, in either case; no other
 * suffix, no sign, no fraction, no space. */
#pragma once

#include <stdint.h>

#define NB_SIZE_MAX     (1ull << 60) /* 1 EiB: above any disk, and sums of sizes cannot overflow */
#define NB_SIZE_STR_MAX 32           /* "1023.9 TiB" and the like, with the NUL */

/* Parses s. Returns 0, -EINVAL when s is not a size, -ERANGE when it is over NB_SIZE_MAX. */
int nb_size_parse(const char *s, uint64_t *ret);

/* "512 B", "1.5 KiB", "10.0 GiB": one decimal above bytes. Returns buf. */
const char *nb_size_format(uint64_t n, char buf[static NB_SIZE_STR_MAX]);
