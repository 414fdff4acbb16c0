// etcd server. Its own go.mod carries replace directives, so `go install` cannot
// build it; importing etcdmain from this module can, and shares Kubernetes'
// module graph (the same etcd version the API server's client is built with).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
