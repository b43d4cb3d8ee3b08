# Install Debian packages from the pushed apt bundle (sd35_provision/aptbundle.py): a flat `file:`
# repository that is the only source apt reads here, so a host without a mirror needs none. apt
# resolves dependencies against what the host has and installs only what is missing.
set -eu
bundle=@bundle@
list=$bundle/sources.list
parts=$bundle/sources.list.d
printf 'deb [trusted=yes] file:%s ./\n' "$bundle" > "$list"
mkdir -p "$parts"
export DEBIAN_FRONTEND=noninteractive
# List-Cleanup=0: the lists of the host's own sources stay for when its mirror is back.
apt-get -o "Dir::Etc::SourceList=$list" -o "Dir::Etc::SourceParts=$parts" -o APT::Get::List-Cleanup=0 \
    -o Acquire::Languages=none update -qq
apt-get -o "Dir::Etc::SourceList=$list" -o "Dir::Etc::SourceParts=$parts" \
    install --yes --no-install-recommends @packages@
