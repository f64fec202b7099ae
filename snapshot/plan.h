/* plan.h: what the layer writer asks of the counting pass when it splits the changes into several layers. */
#pragma once

#include <stdint.h>

#include "snapshot/snapshot.h"

/* The names, in tree order, of a hard-linked entry of the changes (n >= 2): 1 and the names on the first
 * call for its inode, which then go into one layer together; 0 on later calls (they were handed out);
 * -ENOENT when the inode has fewer than two names among the changes, or was not counted (created since). */
int snap_plan_take_links(SnapPlan *p, uint64_t dev, uint64_t ino, char *const **ret_names, size_t *ret_n);
void snap_plan_links_reset(SnapPlan *p);
