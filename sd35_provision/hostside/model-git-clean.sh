# The weights are checked out: git-lfs's own copies would only double the disk use.
rm -rf @dir@/.git/lfs/objects @dir@/.git/lfs/tmp
