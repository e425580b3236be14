"""Jobs that renew credentials without a person, run by `scoregate` in CronJobs (k8s/).

`pulltoken` renews the image-pull Secret's ACR token password (`scoregate registry
rotate-pull-token`), through `acrtokens` (Azure Resource Manager) and `kubeapi` (the
Kubernetes API from inside a pod). The exit codes are here, apart from those modules, so
that `scoregate --help` does not load the Azure SDK.
"""

ROTATION_EXIT_CODES = """\
exit codes:
  0  done: the Secret's password was renewed, or it is not yet due (see "rotated")
  1  refused: no such Secret or token, a Secret that is not a docker config or holds
     another registry user, or that does not say which password it holds
  2  usage: bad arguments, or no in-cluster credentials (not in a pod)
  3  Resource Manager, Entra ID or the Kubernetes API failed: the Secret is unchanged and
     its password still valid; run again
with --json the outcome, or the failure as {"error", "code", ...}, is one JSON document
"""
