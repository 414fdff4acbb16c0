# Fixtures for a real API server (kube_cluster, kubeconfig, kube_api, crds,
# namespace); they start nothing unless a test requests them.
pytest_plugins = ["localcluster.pytest_plugin"]
