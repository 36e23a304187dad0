"""The Kubernetes layer: the k3s bring-up and its gates, the Helm releases (Cilium, the
Hetzner cloud controller and CSI) and their chart-values checks."""
