/* verb.h: the verbs of nbsnap, the command line, one file per group: verb-save.c runs the work in this
 * process (baseline, save), verb-client.c asks nbsnapd through its unix socket (create-image, status, list,
 * delete, cancel). nbsnap.c is main: the dispatch and the general help. Each verb takes argv from its own
 * name on and returns the exit status (0 success, 1 failure, 2 usage, 3 the agent cannot be reached). */
#pragma once

/* --socket PATH given before the command (nbsnap --socket PATH COMMAND ...), NULL when not; a --socket
 * after the command wins over it. */
extern const char *arg_socket;

int verb_baseline(int argc, char **argv);
int verb_save(int argc, char **argv);
/* verb-diff.c: the preview of a save, run in this process. */
int verb_diff(int argc, char **argv);
/* cmd: 'c' create-image, 's' status, 'l' list, 'd' delete or cancel (DELETE of one image). */
int verb_api(int argc, char **argv, char cmd);
