#include "agent/agent-version.h"

const char *nbsnap_version(void)
{
        return NBSNAP_VERSION;
}

const char *nbsnap_user_agent(void)
{
        return "nbsnap/" NBSNAP_VERSION;
}
