/* store.h: nbsnapd's durable state, under the state dir: one JSON file per image (images/<id>.json: the API
 * object plus what the agent needs to find the image again) and the outbox (outbox/<seq>.json: the state
 * changes not yet acknowledged by the control plane, sent in sequence order). Every file is written to a
 * temporary name, fsync'ed, renamed and its directory fsync'ed: after a crash a record is the old one or the
 * new one, never half of one; temporary files a crash left are removed at the next open. A reserve file
 * keeps NB_STORE_RESERVE_BYTES allocated and is released when a write finds the disk full, so that a save
 * running when the state dir fills up still records how it ended. Thread-safe: the loop writes, the reporter
 * reads and acknowledges. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "agent/image.h"

#define NB_STORE_RECORD_MAX (256u * 1024) /* bytes of one image or outbox file */
#define NB_STORE_IMAGES_MAX 1000          /* image records kept; the oldest finished ones go first */
#define NB_OUTBOX_MAX       10000         /* unacknowledged reports kept */
#define NB_STORE_RESERVE_BYTES                                                                              \
        (128u * 1024) /* kept allocated in the state dir, released when it is full: a save's last records   \
                       */
#define NB_STORE_ROOM_MIN    (64u * 1024) /* free bytes besides the reserve for a new save to be accepted */
#define NB_STORE_ROOM_INODES 16           /* free inodes for the same */

typedef struct NbStore NbStore;

/* Opens (creating 0700) STATE_DIR, STATE_DIR/images and STATE_DIR/outbox; removes temporary files left by a
 * crash; allocates the reserve if it can. */
int nb_store_open(const char *state_dir, NbStore **ret, NbError *e);
NbStore *nb_store_free(NbStore *s);
/* Temporary files removed by nb_store_open(). */
size_t nb_store_stale_removed(const NbStore *s);
/* 0 when a new save can be recorded to its end: writable, the reserve in place (allocated again if it was
 * released) and NB_STORE_ROOM_MIN free besides; else -ENOSPC/-EDQUOT (full) or -EROFS & co. with a message.
 */
int nb_store_room(NbStore *s, NbError *e);

int nb_store_put_image(NbStore *s, const NbImage *img, NbError *e);
int nb_store_remove_image(NbStore *s, const char *id);
/* Every image record, in no particular order; unreadable records are skipped and counted in *ret_bad. */
int nb_store_load_images(NbStore *s, NbImage ***ret, size_t *ret_n, size_t *ret_bad, NbError *e);

/* Appends a report to the outbox; returns its sequence number. */
int nb_outbox_push(NbStore *s, const char *json, uint64_t *ret_seq, NbError *e);
/* The oldest report: 1 with seq and json (free it), 0 when the outbox is empty. */
int nb_outbox_peek(NbStore *s, uint64_t *ret_seq, char **ret_json, NbError *e);
/* Removes an acknowledged report. One that cannot be removed (state dir read-only) is no longer offered by
 * nb_outbox_peek() in this process (no resending loop); it is removed at a later ack when that works, else
 * it is sent again after a restart (at least once). */
int nb_outbox_ack(NbStore *s, uint64_t seq);
size_t nb_outbox_count(NbStore *s);
