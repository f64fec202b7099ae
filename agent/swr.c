#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <curl/curl.h>

#include "agent/agent-version.h"
#include "agent/swr.h"
#include "common/sysinfo.h"

int nb_registry_host(const char *url, char **ret)
{
        CURLU *u = curl_url();
        char *host = NULL, *port = NULL;
        int r = -EINVAL;
        if (!u)
                return -ENOMEM;
        if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
                (void)curl_url_get(u, CURLUPART_PORT, &port, 0);
                r = asprintf(ret, "%s%s%s", host, port ? ":" : "", port ? port : "") < 0 ? -ENOMEM : 0;
        }
        curl_free(host);
        curl_free(port);
        curl_url_cleanup(u);
        return r;
}

int nb_swr_path(const char *host, const char *namespace, const char *name, const char *tag, char **ret)
{
        return asprintf(ret, "%s/%s/%s:%s", host, namespace, name, tag) < 0 ? -ENOMEM : 0;
}

const char *nb_arch_to_modelarts(const char *oci_arch, char buf[static NB_ARCH_MAX])
{
        if (strcmp(oci_arch, "amd64") == 0)
                snprintf(buf, NB_ARCH_MAX, "X86_64");
        else if (strcmp(oci_arch, "arm64") == 0)
                snprintf(buf, NB_ARCH_MAX, "AARCH64");
        else {
                size_t i = 0;
                for (; oci_arch[i] && i < NB_ARCH_MAX - 1; i++)
                        buf[i] = (char)(oci_arch[i] >= 'a' && oci_arch[i] <= 'z' ? oci_arch[i] - 32
                                                                                 : oci_arch[i]);
                buf[i] = '\0';
        }
        return buf;
}

const char *nb_machine_arch_modelarts(char buf[static NB_ARCH_MAX])
{
        return nb_arch_to_modelarts(nb_machine_arch(), buf);
}

RegClientOptions nb_reg_client_options(const char *url, const char *authfile, const char *ca_file)
{
        return (RegClientOptions){
                .url = url,
                .authfile = authfile,
                .ca_file = ca_file,
                .user_agent = nbsnap_user_agent(),
        };
}
