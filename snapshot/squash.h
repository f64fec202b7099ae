/* squash.h: what squash.c shares with its unit test. snapshot.h says what a squash is. */
#pragma once

#include "snapshot/snapshot.h"

/* Lowers the limit on paths (index) and on recorded changes, so a test can reach it. */
void snap_squash_set_entries_max(SnapSquash *q, size_t max);
