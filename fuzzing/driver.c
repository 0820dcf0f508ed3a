/* SPDX-License-Identifier: MIT */
/* Replay driver: runs LLVMFuzzerTestOneInput on each file named on the
 * command line, so the fuzz target builds and runs with gcc (and in 'make
 * check', over the seed corpus) without libFuzzer. */
#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
main (int argc, char **argv)
{
  int i;

  for (i = 1; i < argc; i++) {
    FILE *fp = fopen (argv[i], "rb");
    uint8_t *data;
    long size;

    if (!fp || fseek (fp, 0, SEEK_END) != 0 || (size = ftell (fp)) < 0 ||
        fseek (fp, 0, SEEK_SET) != 0) {
      perror (argv[i]);
      exit (EXIT_FAILURE);
    }
    data = malloc (size ? size : 1);
    if (!data || fread (data, 1, size, fp) != (size_t) size) {
      perror (argv[i]);
      exit (EXIT_FAILURE);
    }
    fclose (fp);
    LLVMFuzzerTestOneInput (data, size);
    free (data);
    printf ("ok: %s\n", argv[i]);
  }
  return EXIT_SUCCESS;
}
