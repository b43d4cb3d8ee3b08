# Point `current` at a release atomically (rename over the old link); the old one becomes `previous`.
set -eu
cd @root@
old=$(readlink current 2>/dev/null || true)
ln -sfn @target@ .current.new
mv -T .current.new current
if [ -n "$old" ] && [ "$old" != @target@ ]; then ln -sfn "$old" .previous.new && mv -T .previous.new previous; fi
