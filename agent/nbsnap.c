/* nbsnap: the command line. `baseline` records the root filesystem at container start; `save` packs what
 * changed since then into one layer and pushes base layers + that layer as a new image (agent/verb-save.c).
 * `create-image`, `status`, `list`, `delete` and `cancel` ask nbsnapd (the agent) over its unix socket and
 * print the JSON its API returns (agent/verb-client.c). This file: the dispatch, the general help,
 * --version. */
#include <locale.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "agent/agent-version.h"
#include "agent/config.h"
#include "agent/log.h"
#include "agent/verb.h"
#include "snapshot/snapshot.h"

static const char *const usage_main =
        "Usage: nbsnap [--socket PATH] COMMAND [OPTIONS]\n"
        "\n"
        "Save a running notebook container as a container image.\n"
        "\n"
        "Commands:\n"
        "  baseline   record the root filesystem as it is now (run once, at container start)\n"
        "  save       pack what changed since the baseline into one layer and push the image\n"
        "  diff       show what the next save would pack (A/C/D lines and a summary), writing nothing\n"
        "\n"
        "Through the agent (nbsnapd, on its unix socket):\n"
        "  create-image   ask the agent to save this instance as an image (prints the image object)\n"
        "  status ID      show one image; --wait follows the save until it ends\n"
        "  list           show the images saved from this instance, newest first\n"
        "  delete ID      delete an image; a save that runs is cancelled (nothing is tagged)\n"
        "  cancel ID      the same request as delete\n"
        "\n"
        "Options:\n"
        "  --socket PATH  the agent's socket, for the commands above that talk to it (default: the\n"
        "                 listen = unix:PATH of nbsnapd's config file, else " NB_DEFAULT_SOCKET ")\n"
        "  -h, --help     show this help (nbsnap COMMAND --help for a command's options)\n"
        "  --version      show the version\n"
        "\n"
        "Examples: nbsnap create-image --name my-env --tag v1 --wait; nbsnap list; man nbsnap\n";

/* Deep trees keep one directory fd per level open. */
static void raise_fd_limit(void)
{
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void)setrlimit(RLIMIT_NOFILE, &rl);
        }
}

const char *arg_socket = NULL;

/* Options before the command (nbsnap --socket PATH status ID, as docker -H): returns how many argv entries
 * they took, or -1 on a usage error (printed). */
static int parse_global(int argc, char **argv)
{
        int i = 1;
        while (i < argc && strncmp(argv[i], "--socket", 8) == 0) {
                if (argv[i][8] == '=')
                        arg_socket = argv[i] + 9;
                else if (argv[i][8] == '\0' && i + 1 < argc)
                        arg_socket = argv[++i];
                else if (argv[i][8] == '\0') {
                        fprintf(stderr, "nbsnap: --socket needs a path\n");
                        return -1;
                } else
                        break; /* --socketX: not ours, the dispatch names it */
                if (!arg_socket[0]) {
                        fprintf(stderr, "nbsnap: --socket needs a path\n");
                        return -1;
                }
                i++;
        }
        return i - 1;
}

int main(int argc, char **argv)
{
        setlocale(LC_ALL, "C.UTF-8");
        raise_fd_limit();
        nb_log_init("nbsnap");
        int g = parse_global(argc, argv);
        if (g < 0)
                return 2;
        argc -= g;
        argv += g;
        if (argc < 2) {
                fputs(usage_main, stderr);
                return 2;
        }
        const char *cmd = argv[1];
        if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
                fputs(usage_main, stdout);
                return 0;
        }
        if (strcmp(cmd, "--version") == 0) {
                printf("nbsnap %s (gzip: %s, zstd: %s)\n", nbsnap_version(),
                       snap_compression_engine(SNAP_COMPRESSION_GZIP),
                       snap_compression_engine(SNAP_COMPRESSION_ZSTD));
                return 0;
        }
        if (arg_socket &&
            (strcmp(cmd, "baseline") == 0 || strcmp(cmd, "save") == 0 || strcmp(cmd, "diff") == 0)) {
                fprintf(stderr, "nbsnap: --socket is for the commands that talk to nbsnapd; %s runs here\n",
                        cmd);
                return 2;
        }
        if (strcmp(cmd, "baseline") == 0)
                return verb_baseline(argc - 1, argv + 1);
        if (strcmp(cmd, "save") == 0)
                return verb_save(argc - 1, argv + 1);
        if (strcmp(cmd, "diff") == 0)
                return verb_diff(argc - 1, argv + 1);
        if (strcmp(cmd, "create-image") == 0)
                return verb_api(argc - 1, argv + 1, 'c');
        if (strcmp(cmd, "status") == 0)
                return verb_api(argc - 1, argv + 1, 's');
        if (strcmp(cmd, "list") == 0)
                return verb_api(argc - 1, argv + 1, 'l');
        if (strcmp(cmd, "delete") == 0 || strcmp(cmd, "cancel") == 0)
                return verb_api(argc - 1, argv + 1, 'd');
        fprintf(stderr, "nbsnap: unknown command '%s'\n%s", cmd, usage_main);
        return 2;
}
