# Check out the pinned commit of a model repository, weights still as LFS pointers (deploys/model.py).
# Git objects only (pointers, no weights): cheap to redo if this was interrupted.
if [ ! -d @dir@/.git ]; then rm -rf @partial@ && GIT_LFS_SKIP_SMUDGE=1 git -c safe.directory='*' -c advice.detachedHead=false clone --quiet --no-checkout -- @url@ @partial@ && rm -rf @dir@ && mv -T @partial@ @dir@; fi
cd @dir@
# The repo's own lfs filters: a host whose git-lfs was never set up system-wide still gets weights.
git -c safe.directory='*' -c advice.detachedHead=false lfs install --local >/dev/null
git -c safe.directory='*' -c advice.detachedHead=false cat-file -e @revision@^{commit} 2>/dev/null || GIT_LFS_SKIP_SMUDGE=1 git -c safe.directory='*' -c advice.detachedHead=false fetch --quiet origin @revision@ 2>/dev/null || GIT_LFS_SKIP_SMUDGE=1 git -c safe.directory='*' -c advice.detachedHead=false fetch --quiet --tags origin
GIT_LFS_SKIP_SMUDGE=1 git -c safe.directory='*' -c advice.detachedHead=false checkout --quiet --force --detach @revision@
