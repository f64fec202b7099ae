/* json.h: the cleanup of a cJSON tree, for every agent file that builds or parses one (the one place for
 * it: STYLE.md, one cleanup helper per third-party handle). */
#pragma once

#include <cjson/cJSON.h>

#include "common/macro.h"

static inline void cjson_deletep(cJSON **j)
{
        cJSON_Delete(*j);
}
#define _cleanup_cjson_ _cleanup_(cjson_deletep)
