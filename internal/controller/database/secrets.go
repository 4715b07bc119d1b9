package database

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/url"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/instance"
)

const passwordAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// generatePassword returns n characters drawn uniformly from an alphanumeric
// alphabet with crypto/rand (no modulo bias: rand.Text-style rejection sampling).
func generatePassword(n int) (string, error) {
	out := make([]byte, 0, n)
	buf := make([]byte, 64)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			return "", fmt.Errorf("reading random bytes: %w", err)
		}
		for _, b := range buf {
			// 62*4 = 248: reject bytes >= 248 so every character is equally likely.
			if b >= 248 {
				continue
			}
			out = append(out, passwordAlphabet[int(b)%len(passwordAlphabet)])
			if len(out) == n {
				break
			}
		}
	}
	return string(out), nil
}

func postgresURI(user, password, host, port, database string) string {
	u := url.URL{
		Scheme: "postgresql",
		User:   url.UserPassword(user, password),
		Host:   net.JoinHostPort(host, port),
		Path:   "/" + database,
	}
	return u.String()
}

// ensureSecret creates the Secret name with data() if it does not exist. An existing
// Secret is never overwritten: passwords are generated once.
func (r *Reconciler) ensureSecret(ctx context.Context, db *databasev1.Database, name string, data func() (map[string][]byte, error)) error {
	var existing corev1.Secret
	err := r.Get(ctx, types.NamespacedName{Namespace: db.Namespace, Name: name}, &existing)
	if err == nil {
		if !metav1.IsControlledBy(&existing, db) {
			return fmt.Errorf("secret %s exists and is not owned by Database %s", name, db.Name)
		}
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("getting secret %s: %w", name, err)
	}
	d, err := data()
	if err != nil {
		return err
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: db.Namespace,
			Labels:    podLabels(db),
		},
		Type: corev1.SecretTypeOpaque,
		Data: d,
	}
	if err := controllerutil.SetControllerReference(db, secret, r.Scheme()); err != nil {
		return fmt.Errorf("owning secret %s: %w", name, err)
	}
	if err := r.Create(ctx, secret, client.FieldOwner(FieldOwner)); err != nil {
		if apierrors.IsAlreadyExists(err) {
			// Created meanwhile (stale cache): keep the existing one.
			return nil
		}
		return fmt.Errorf("creating secret %s: %w", name, err)
	}
	return nil
}

func (r *Reconciler) ensureSecrets(ctx context.Context, db *databasev1.Database) error {
	if err := r.ensureSecret(ctx, db, credentialsSecretName(db), func() (map[string][]byte, error) {
		pw, err := generatePassword(32)
		if err != nil {
			return nil, err
		}
		return credentialsData(db, pw), nil
	}); err != nil {
		return err
	}
	return r.ensureSecret(ctx, db, internalSecretName(db), func() (map[string][]byte, error) {
		repl, err := generatePassword(32)
		if err != nil {
			return nil, err
		}
		token, err := generatePassword(48)
		if err != nil {
			return nil, err
		}
		return map[string][]byte{
			"replication-username":                   []byte(instance.ReplicationUser),
			instance.InternalReplicationPasswordFile: []byte(repl),
			instance.InternalAgentTokenFile:          []byte(token),
		}, nil
	})
}
