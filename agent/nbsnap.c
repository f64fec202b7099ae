#include <stdio.h>

#include "agent-version.h"

int main(void)
{
        /* replaced by the CLI as the save engine lands */
        printf("nbsnap %s\n", nbsnap_version());
        return 1;
}
