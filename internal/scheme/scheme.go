// Package scheme builds the runtime.Scheme of every type the operator reads or writes.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	databasev1 "github.com/example/postgres-operator/api/v1"
)

// New returns a scheme with the Kubernetes built-in types and database.example.com/v1.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := databasev1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}
