"""Example projects and manifests for podtask."""
