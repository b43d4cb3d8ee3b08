# Whether the disk under a path is an SSD (the StorageKind fact, sd35_provision/facts/disk.py).
# Usage: sh storage_kind.sh PATH (the fact runs it as `set -- PATH` and this text).
# Prints key=value lines for the fact's parser; POSIX sh, reads /proc and /sys only.
#
# It finds the mount holding the path (or its nearest existing parent) in
# /proc/self/mountinfo (longest mount point that is a prefix of the resolved
# path), turns the mount's device number into a block device through
# /sys/dev/block (the source path for btrfs, whose device number is anonymous),
# then walks a work list down to whole disks: partitions to their disk
# (/sys/class/block/X/..), device-mapper and md to their members
# (/sys/block/X/slaves), loop devices to the disk under their backing file.
set -f
p=$1
while [ ! -e "$p" ]; do p=$(dirname "$p"); done
echo "path=$p"
r=$(readlink -f "$p" 2>/dev/null) || r=$p
[ -n "$r" ] || r=$p
c=$(cat /run/systemd/container 2>/dev/null)
if [ -z "$c" ] && command -v systemd-detect-virt >/dev/null 2>&1; then c=$(systemd-detect-virt --container 2>/dev/null); fi
if [ -z "$c" ] || [ "$c" = none ]; then if [ -e /.dockerenv ]; then c=docker; elif [ -e /run/.containerenv ]; then c=podman; else c=none; fi; fi
echo "container=$c"
mnt() {
  awk -v p="$1" 'BEGIN { best = -1 }
    { t = $5; gsub(/\\040/, " ", t)
      if ((t == "/" || t == p || index(p, t "/") == 1) && length(t) >= best) {
        best = length(t); line = $5 " " $3 " " $4
        for (i = 7; i <= NF; i++) if ($i == "-") { line = line " " $(i + 1) " " $(i + 2); break } } }
    END { print line }' /proc/self/mountinfo
}
blk() {
  if [ -e "/sys/dev/block/$1" ]; then b=$(readlink -f "/sys/dev/block/$1"); echo "${b##*/}"; return; fi
  case "$2" in /dev/*) if [ -e "$2" ]; then b=$(readlink -f "$2"); b=${b##*/}; [ -e "/sys/class/block/$b" ] && echo "$b"; fi;; esac
}
set -- $(mnt "$r")
echo "mount=$1"; echo "majmin=$2"; echo "root=$3"; echo "fstype=$4"; echo "source=$5"
todo=$(blk "$2" "$5")
[ -n "$todo" ] || echo "unresolved=$5"
seen=; n=0
while [ -n "$todo" ] && [ "$n" -lt 64 ]; do
  n=$((n + 1))
  d=${todo%% *}
  case "$todo" in *" "*) todo=${todo#* };; *) todo=;; esac
  case " $seen " in *" $d "*) continue;; esac
  seen="$seen $d"
  if [ -e "/sys/class/block/$d/partition" ]; then
    w=$(readlink -f "/sys/class/block/$d"); w=${w%/*}; w=${w##*/}
    echo "partition=$d disk=$w"; todo=${todo:+$todo }$w
  elif [ -r "/sys/block/$d/loop/backing_file" ]; then
    b=$(cat "/sys/block/$d/loop/backing_file"); b=${b% (deleted)}
    echo "loop=$d backing=$b"
    m=$(mnt "$(readlink -f "$b" 2>/dev/null || echo "$b")")
    x=$(blk "$(echo "$m" | cut -d' ' -f2)" "$(echo "$m" | cut -d' ' -f5)")
    if [ -n "$x" ]; then todo=${todo:+$todo }$x; else echo "unresolved=$d fstype=$(echo "$m" | cut -d' ' -f4)"; fi
  elif [ -n "$(ls "/sys/block/$d/slaves" 2>/dev/null)" ]; then
    s=$(ls "/sys/block/$d/slaves" | tr '\n' ' '); s=${s% }
    echo "holder=$d slaves=$(echo "$s" | tr ' ' ',')"; todo=${todo:+$todo }$s
  elif [ -d "/sys/block/$d" ]; then
    rot=$(cat "/sys/block/$d/queue/rotational" 2>/dev/null)
    dev=$(readlink -f "/sys/block/$d/device" 2>/dev/null)
    ven=$(cat "/sys/block/$d/device/vendor" 2>/dev/null | tr -d ' ')
    drv=$(readlink "/sys/block/$d/device/driver" 2>/dev/null); drv=${drv##*/}
    mod=$(cat "/sys/block/$d/device/model" 2>/dev/null | sed 's/ *$//')
    echo "disk=$d rotational=${rot:--} vendor=${ven:--} driver=${drv:--} device=${dev:--} model=${mod:--}"
  else
    echo "unresolved=$d"
  fi
done
true
