#include <string.h>
#include <sys/utsname.h>
#include <stdio.h>
#include <unistd.h>

#include "common/sysinfo.h"

unsigned nb_cpus(unsigned max)
{
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        if (n < 1)
                return 1;
        return (unsigned long)n > max ? max : (unsigned)n;
}

const char *nb_machine_arch(void)
{
        static const struct {
                const char *uname, *oci;
        } map[] = {
                {"x86_64", "amd64"},    {"aarch64", "arm64"}, {"arm64", "arm64"},
                {"ppc64le", "ppc64le"}, {"s390x", "s390x"},   {"riscv64", "riscv64"},
        };
        static __thread char other[65];
        struct utsname u;
        if (uname(&u) < 0)
                return "amd64";
        for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
                if (strcmp(u.machine, map[i].uname) == 0)
                        return map[i].oci;
        snprintf(other, sizeof(other), "%s", u.machine);
        return other;
}
