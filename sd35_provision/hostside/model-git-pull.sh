# Fetch the LFS content of the checkout: all of it, or the files named by --include.
git -c safe.directory='*' -c advice.detachedHead=false lfs pull @include@
