/* uuid.h: random (version 4) UUIDs, the ids of image records. */
#pragma once

/* 36 characters + NUL. */
int nb_uuid(char ret[static 37]);
