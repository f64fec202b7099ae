/* agent-version.h: the version string the programs print and send as their User-Agent. */
#pragma once

const char *nbsnap_version(void);
