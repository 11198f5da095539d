"""Running the platform on a Kubernetes cluster: images, Helm chart, manifests, KFP submission."""
