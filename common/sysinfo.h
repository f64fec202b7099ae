/* sysinfo.h: what nbsnap asks of the machine it runs on. */
#pragma once

/* The online CPU count, at least 1, at most max. */
unsigned nb_cpus(unsigned max);

/* This machine's architecture in the OCI/Go spelling that image indexes and configs use: "amd64", "arm64",
 * "ppc64le", "s390x", "riscv64", or uname's machine field for anything else. */
const char *nb_machine_arch(void);
