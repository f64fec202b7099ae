#include "agent/agent-version.h"

const char *nbsnap_version(void)
{
        return NBSNAP_VERSION;
}
