# Put back the pointers of broken files of a checkout, to pull their content again (deploys/model.py).
cd @dir@
git -c safe.directory='*' -c advice.detachedHead=false lfs install --local >/dev/null
# Gone first, so git writes their pointers again instead of cleaning the broken content.
rm -f -- @names@
GIT_LFS_SKIP_SMUDGE=1 git -c safe.directory='*' -c advice.detachedHead=false checkout --quiet @revision@ -- @names@
