#!/usr/bin/env bash
# Create (or update) the image-pull secret "acr-pull" that every scoregate pod names in
# imagePullSecrets, for an Azure Container Registry.
#
#   ACR_NAME=scoregateacr ACR_USERNAME=<token or SP id> ACR_PASSWORD=<its password> \
#   ACR_PASSWORD_NAME=password1 NAMESPACE=scoregate k8s/create-pull-secret.sh
#
# ACR_PASSWORD_NAME (password1, the default, or password2) says which of the ACR token's
# two passwords this is. It becomes the annotation scoregate/acr-token-password, which the
# rotation job (k8s/base/rotate-pull-token.yaml) reads to renew the *other* password
# before this one expires, never the one in use.
#
# The password never appears on a command line (where `ps` and /proc/*/cmdline show it to
# every user of the machine) nor in this script's output: the Docker config is built with
# shell builtins and reaches kubectl on its standard input, and the rendered Secret goes
# from one kubectl to the other through a pipe. Prefer an ACR token limited to pull on
# the scoregate repositories (az acr token create --scope-map _repositories_pull).
set -euo pipefail

fail() {
    printf 'create-pull-secret: %s\n' "$1" >&2
    exit 2
}

for name in ACR_NAME ACR_USERNAME ACR_PASSWORD; do
    [ -n "${!name:-}" ] || fail "$name is not set"
done
namespace="${NAMESPACE:-scoregate}"
password_name="${ACR_PASSWORD_NAME:-password1}"
secret_name="acr-pull"

# Registry names are 5 to 50 letters and digits; anything else is a typo or an injection.
[[ "$ACR_NAME" =~ ^[A-Za-z0-9]{5,50}$ ]] || fail "ACR_NAME must be 5 to 50 letters or digits"
[[ "$namespace" =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || fail "NAMESPACE is not a valid namespace name"
[[ "$password_name" =~ ^password[12]$ ]] || fail "ACR_PASSWORD_NAME must be password1 or password2"
server="${ACR_NAME,,}.azurecr.io"

# JSON string escaping with parameter expansion only (no subprocess sees the value).
json_string() {
    local s="$1"
    s="${s//\\/\\\\}"
    s="${s//\"/\\\"}"
    s="${s//$'\n'/\\n}"
    s="${s//$'\r'/\\r}"
    s="${s//$'\t'/\\t}"
    printf '"%s"' "$s"
}

docker_config() {
    local auth
    # base64 reads user:password from its standard input, not from its arguments.
    auth="$(printf '%s:%s' "$ACR_USERNAME" "$ACR_PASSWORD" | base64 | tr -d '\n')"
    printf '{"auths":{%s:{"username":%s,"password":%s,"auth":"%s"}}}' \
        "$(json_string "$server")" "$(json_string "$ACR_USERNAME")" \
        "$(json_string "$ACR_PASSWORD")" "$auth"
}

docker_config \
    | kubectl create secret generic "$secret_name" \
        --namespace "$namespace" \
        --type=kubernetes.io/dockerconfigjson \
        --from-file=.dockerconfigjson=/dev/stdin \
        --dry-run=client --output=yaml \
    | kubectl annotate --local --filename=- --output=yaml \
        "scoregate/acr-token-password=$password_name" \
    | kubectl apply --namespace "$namespace" --filename=-
