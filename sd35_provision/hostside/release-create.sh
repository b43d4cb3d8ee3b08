# Make a release directory (deploys/release.py): staged beside, then renamed into place.
set -eu
rm -rf @staging@
mkdir -m 755 @staging@
ln -s @venv@ @staging@/venv
ln -s @app@ @staging@/app
ln -s @model@ @staging@/model
printf '%s\n' @release_json@ > @staging@/release.json
printf '%s' @service_env@ > @staging@/@service_env_copy@
chmod 644 @staging@/release.json @staging@/@service_env_copy@
mv -T @staging@ @release@
