/* agent-version.h: the version string the programs print and send as their User-Agent. */
#pragma once

const char *nbsnap_version(void);
/* "nbsnap/<version>": the User-Agent of every request the programs make (registry, reporter, CLI). */
const char *nbsnap_user_agent(void);
