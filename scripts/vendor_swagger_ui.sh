#!/usr/bin/env bash
# Refresh the Swagger UI files that the control plane serves at /docs (no CDN): takes the
# swagger-ui-dist package from the npm registry, copies the bundle, its CSS and licence
# files into controlplane/ui/static/vendor/swagger-ui/, and drops the source-map comments
# (the maps are not shipped). The result is committed; nothing runs this at build time.
#   scripts/vendor_swagger_ui.sh [VERSION]     (default: the version in VERSION there)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=controlplane/ui/static/vendor/swagger-ui
version=${1:-$(sed -n 's/^swagger-ui-dist \([0-9.]*\).*/\1/p' "$dest/VERSION")}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "swagger-ui-dist@$version" >/dev/null && tar xzf swagger-ui-dist-*.tgz)
for f in swagger-ui-bundle.js swagger-ui.css; do
  sed '/^\/[*/]# sourceMappingURL=/d; s|/\*# sourceMappingURL=[^*]*\*/||' "$tmp/package/$f" > "$dest/$f"
done
cp "$tmp/package/LICENSE" "$tmp/package/NOTICE" "$tmp/package/swagger-ui-bundle.js.LICENSE.txt" "$dest/"
echo "swagger-ui-dist $version (npm), files: swagger-ui-bundle.js swagger-ui.css, source-map comments removed" > "$dest/VERSION"
echo "vendored swagger-ui-dist $version into $dest"
