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
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
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

func postgresURI(user, password, host, port, database, sslmode string) string {
	u := url.URL{
		Scheme: "postgresql",
		User:   url.UserPassword(user, password),
		Host:   net.JoinHostPort(host, port),
		Path:   "/" + database,
	}
	if sslmode != "" {
		u.RawQuery = url.Values{"sslmode": {sslmode}}.Encode()
	}
	return u.String()
}

// ensureSecret returns the Secret name, creating it with data() when it does not
// exist (created is then true). An existing Secret is never regenerated: passwords
// are generated once. A Secret of that name that this Database does not own is a
// conflict: it is neither adopted nor overwritten (nil is returned).
func (r *Reconciler) ensureSecret(ctx context.Context, db *databasev1.Database, obs *observation, name string,
	data func() (map[string][]byte, error)) (secret *corev1.Secret, created bool, err error) {
	key := types.NamespacedName{Namespace: db.Namespace, Name: name}
	existing := &corev1.Secret{}
	err = r.Get(ctx, key, existing)
	if err == nil {
		if !metav1.IsControlledBy(existing, db) {
			conflict(obs, "Secret", existing, db)
			return nil, false, nil
		}
		return existing, false, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, false, fmt.Errorf("getting secret %s: %w", name, err)
	}
	d, err := data()
	if err != nil {
		return nil, false, err
	}
	secret = &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: db.Namespace,
			Labels:    podLabels(db),
		},
		Type: corev1.SecretTypeOpaque,
		Data: d,
	}
	if err := controllerutil.SetControllerReference(db, secret, r.Scheme()); err != nil {
		return nil, false, fmt.Errorf("owning secret %s: %w", name, err)
	}
	if err := r.Create(ctx, secret, client.FieldOwner(FieldOwner)); err != nil {
		if !apierrors.IsAlreadyExists(err) {
			return nil, false, fmt.Errorf("creating secret %s: %w", name, err)
		}
		// The cache holds only Secrets we label: read the one that exists directly.
		if r.APIReader == nil {
			return nil, false, fmt.Errorf("secret %s exists but is not in the cache", name)
		}
		if err := r.APIReader.Get(ctx, key, existing); err != nil {
			return nil, false, fmt.Errorf("getting secret %s: %w", name, err)
		}
		if !metav1.IsControlledBy(existing, db) {
			conflict(obs, "Secret", existing, db)
			return nil, false, nil
		}
		return existing, false, nil
	}
	return secret, true, nil
}

// reconcileSecrets creates the two Secrets once, keeps the derived keys of the
// credentials Secret (uri, host, ...) consistent with its password (so an edited
// password is reflected in uri), writes the recorded system identifier into the
// internal Secret for the agents, and remembers the agent tokens.
func (r *Reconciler) reconcileSecrets(ctx context.Context, db *databasev1.Database, obs *observation) error {
	initialised := db.Status.SystemIdentifier != ""
	cred, created, err := r.ensureSecret(ctx, db, obs, credentialsSecretName(db), func() (map[string][]byte, error) {
		pw, err := generatePassword(32)
		if err != nil {
			return nil, err
		}
		return credentialsData(db, pw, obs.CAPEM, obs.ClusterDomain), nil
	})
	if err != nil {
		return err
	}
	if created && initialised && r.Recorder != nil {
		r.Recorder.Eventf(db, nil, corev1.EventTypeWarning, "CredentialsRegenerated", "RegenerateSecret",
			"Secret %s was missing and was recreated with a new password; the instances apply it to the running primary", cred.Name)
	}
	if cred != nil && !created {
		want := credentialsData(db, string(cred.Data[agentapi.CredentialsPasswordFile]), obs.CAPEM, obs.ClusterDomain)
		if len(cred.Data[agentapi.CredentialsPasswordFile]) > 0 && !sameData(cred.Data, want) {
			if err := r.patchSecretData(ctx, cred, want); err != nil {
				return fmt.Errorf("refreshing the derived keys: %w", err)
			}
			logf.FromContext(ctx).Info("credentials Secret changed: derived keys (uri) refreshed", "secret", cred.Name)
		}
	}

	internal, created, err := r.ensureSecret(ctx, db, obs, internalSecretName(db), func() (map[string][]byte, error) {
		repl, err := generatePassword(32)
		if err != nil {
			return nil, err
		}
		token, err := generatePassword(48)
		if err != nil {
			return nil, err
		}
		mkey, err := generatePassword(48)
		if err != nil {
			return nil, err
		}
		d := map[string][]byte{
			"replication-username":                   []byte(agentapi.ReplicationUser),
			agentapi.InternalReplicationPasswordFile: []byte(repl),
			agentapi.InternalAgentTokenFile:          []byte(token),
			agentapi.InternalManifestKeyFile:         []byte(mkey),
		}
		if db.Status.SystemIdentifier != "" {
			d[agentapi.InternalSystemIDFile] = []byte(db.Status.SystemIdentifier)
		}
		return d, nil
	})
	if err != nil {
		return err
	}
	if internal == nil {
		return nil
	}
	if created && initialised && r.Recorder != nil {
		r.Recorder.Eventf(db, nil, corev1.EventTypeWarning, "InternalSecretRegenerated", "RegenerateSecret",
			"Secret %s was missing and was recreated with a new replication password and agent token", internal.Name)
	}
	if id := db.Status.SystemIdentifier; id != "" && string(internal.Data[agentapi.InternalSystemIDFile]) != id {
		if err := r.recordSystemID(ctx, internal, id); err != nil {
			return err
		}
	}
	if len(internal.Data[agentapi.InternalManifestKeyFile]) == 0 {
		// A Secret of an operator before signed manifests: add the key once.
		mkey, err := generatePassword(48)
		if err != nil {
			return err
		}
		if err := r.patchSecretData(ctx, internal, map[string][]byte{agentapi.InternalManifestKeyFile: []byte(mkey)}); err != nil {
			return err
		}
	}
	obs.SecretSystemID = string(internal.Data[agentapi.InternalSystemIDFile])
	obs.Agent.Tokens = r.rememberToken(db, string(internal.Data[agentapi.InternalAgentTokenFile]))
	return nil
}

// recordSystemID writes the system identifier into the internal Secret, where
// every agent reads it before starting PostgreSQL.
func (r *Reconciler) recordSystemID(ctx context.Context, internal *corev1.Secret, id string) error {
	return r.patchSecretData(ctx, internal, map[string][]byte{agentapi.InternalSystemIDFile: []byte(id)})
}

// patchSecretData sets keys of a Secret (merge patch: the others stay).
func (r *Reconciler) patchSecretData(ctx context.Context, secret *corev1.Secret, data map[string][]byte) error {
	patch := client.MergeFrom(secret.DeepCopy())
	if secret.Data == nil {
		secret.Data = map[string][]byte{}
	}
	for k, v := range data {
		secret.Data[k] = v
	}
	if err := r.Patch(ctx, secret, patch, client.FieldOwner(FieldOwner)); err != nil {
		return fmt.Errorf("patching secret %s: %w", secret.Name, err)
	}
	return nil
}

func sameData(have, want map[string][]byte) bool {
	for k, v := range want {
		if string(have[k]) != string(v) {
			return false
		}
	}
	return true
}

// rememberToken returns the tokens to try: the Secret's, then the one used before
// it changed (the agents pick up a new token only when the kubelet refreshes the
// mounted file).
func (r *Reconciler) rememberToken(db *databasev1.Database, token string) []string {
	key := types.NamespacedName{Namespace: db.Namespace, Name: db.Name}
	v, _ := r.tokens.Load(key)
	rem, _ := v.(rememberedTokens)
	var prev []string
	if rem.uid == db.UID {
		// A re-created Database of the same name never inherits the tokens
		// of the one before.
		prev = rem.tokens
	}
	if len(prev) > 0 && prev[0] == token {
		return prev
	}
	out := []string{token}
	if len(prev) > 0 && prev[0] != "" {
		out = append(out, prev[0])
	}
	r.tokens.Store(key, rememberedTokens{uid: db.UID, tokens: out})
	return out
}
