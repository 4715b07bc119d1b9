package plugin

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	databasev1 "github.com/example/postgres-operator/api/v1"
)

// operatorNamespace and operatorSelector find the operator's pods for the
// report.
const (
	operatorNamespace = "postgres-operator-system"
	operatorSelector  = "control-plane=controller-manager"
)

func reportCommand(o *options) *cobra.Command {
	var output, opNamespace string
	var logLines int64
	cmd := &cobra.Command{
		Use:   "report DATABASE",
		Short: "Write a tarball of a Database's objects, events and logs for a bug report (no Secret contents)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			ns, c, cs, err := o.session()
			if err != nil {
				return err
			}
			if output == "" {
				output = fmt.Sprintf("report-%s-%s-%s.tar.gz", ns, args[0], time.Now().UTC().Format("20060102-150405"))
			}
			f, err := os.OpenFile(output, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			n, werr := writeReport(ctx, f, c, cs, ns, args[0], opNamespace, logLines)
			if err := f.Close(); werr == nil {
				werr = err
			}
			if werr != nil {
				return werr
			}
			fmt.Fprintf(o.out, "wrote %s (%d files)\n", output, n)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "tarball to write (default report-<namespace>-<database>-<time>.tar.gz)")
	cmd.Flags().StringVar(&opNamespace, "operator-namespace", operatorNamespace, "namespace of the operator, whose logs are included")
	cmd.Flags().Int64Var(&logLines, "tail", 2000, "log lines per container")
	return cmd
}

// tarWriter adds files to a gzipped tarball under one directory.
type tarWriter struct {
	tw    *tar.Writer
	dir   string
	now   time.Time
	files int
}

func (t *tarWriter) add(name string, data []byte) error {
	if err := t.tw.WriteHeader(&tar.Header{Name: t.dir + "/" + name, Mode: 0o600, Size: int64(len(data)), ModTime: t.now,
		Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	_, err := t.tw.Write(data)
	t.files++
	return err
}

func (t *tarWriter) addYAML(name string, obj any) error {
	b, err := yaml.Marshal(obj)
	if err != nil {
		return err
	}
	return t.add(name, b)
}

// writeReport writes the report of Database ns/name to w and returns its number
// of files. Secrets are listed by name and keys only; their values never leave
// the cluster.
func writeReport(ctx context.Context, w io.Writer, c client.Client, cs kubernetes.Interface, ns, name, opNamespace string, logLines int64) (int, error) {
	gz := gzip.NewWriter(w)
	t := &tarWriter{tw: tar.NewWriter(gz), dir: fmt.Sprintf("report-%s-%s", ns, name), now: time.Now()}
	var errs []string
	note := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", what, err))
		}
	}

	db, err := getDatabase(ctx, c, ns, name)
	if err != nil {
		return 0, err
	}
	note("database.yaml", t.addYAML("database.yaml", clean(db)))
	v, err := collectStatus(ctx, c, cs, ns, name)
	note("status", err)
	if err == nil {
		var b bytes.Buffer
		renderStatus(&b, v)
		note("status.txt", t.add("status.txt", b.Bytes()))
	}

	sel := metav1.ListOptions{LabelSelector: instanceSelector(name)}
	for _, list := range []struct {
		file string
		obj  client.ObjectList
	}{
		{"statefulsets.yaml", &appsv1.StatefulSetList{}},
		{"services.yaml", &corev1.ServiceList{}},
		{"persistentvolumeclaims.yaml", &corev1.PersistentVolumeClaimList{}},
		{"pods.yaml", &corev1.PodList{}},
		{"poddisruptionbudgets.yaml", &policyv1.PodDisruptionBudgetList{}},
		{"backups.yaml", &databasev1.BackupList{}},
		{"restores.yaml", &databasev1.RestoreList{}},
		{"jobs.yaml", &batchv1.JobList{}},
	} {
		if err := c.List(ctx, list.obj, client.InNamespace(ns)); err != nil {
			note(list.file, err)
			continue
		}
		note(list.file, t.addYAML(list.file, cleanList(list.obj)))
	}

	// Secrets: names, types and key names only.
	var secrets corev1.SecretList
	if err := c.List(ctx, &secrets, client.InNamespace(ns)); err == nil {
		type secretInfo struct {
			Name string
			Type corev1.SecretType
			Keys []string
		}
		var infos []secretInfo
		for _, s := range secrets.Items {
			info := secretInfo{Name: s.Name, Type: s.Type}
			for k := range s.Data {
				info.Keys = append(info.Keys, k)
			}
			infos = append(infos, info)
		}
		note("secrets.yaml", t.addYAML("secrets.yaml", infos))
	} else {
		note("secrets", err)
	}

	events, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	note("events", err)
	if err == nil {
		note("events.yaml", t.addYAML("events.yaml", cleanList(events)))
	}

	pods, err := cs.CoreV1().Pods(ns).List(ctx, sel)
	note("pods", err)
	if err == nil {
		for _, p := range pods.Items {
			for _, ctr := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
				for _, previous := range []bool{false, true} {
					raw, err := cs.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: ctr.Name, Previous: previous, TailLines: &logLines}).DoRaw(ctx)
					if err != nil {
						if !previous {
							note("logs of "+p.Name+"/"+ctr.Name, err)
						}
						continue
					}
					suffix := ""
					if previous {
						suffix = ".previous"
					}
					note("log", t.add(fmt.Sprintf("logs/%s/%s%s.log", p.Name, ctr.Name, suffix), raw))
				}
			}
		}
	}
	if opNamespace != "" {
		ops, err := cs.CoreV1().Pods(opNamespace).List(ctx, metav1.ListOptions{LabelSelector: operatorSelector})
		if err != nil {
			note("operator pods (ask for access, or pass --operator-namespace='')", err)
		} else {
			for _, p := range ops.Items {
				raw, err := cs.CoreV1().Pods(opNamespace).GetLogs(p.Name, &corev1.PodLogOptions{TailLines: &logLines}).DoRaw(ctx)
				note("operator log", err)
				if err == nil {
					note("operator log", t.add("logs/operator/"+p.Name+".log", raw))
				}
			}
		}
	}
	summary := fmt.Sprintf("kubectl pg report of Database %s/%s at %s\n", ns, name, t.now.UTC().Format(time.RFC3339))
	for _, e := range errs {
		summary += "not collected: " + e + "\n"
	}
	if err := t.add("README.txt", []byte(summary)); err != nil {
		return t.files, err
	}
	if err := t.tw.Close(); err != nil {
		return t.files, err
	}
	return t.files, gz.Close()
}

// clean drops managedFields (noise in a report).
func clean(o client.Object) client.Object {
	o.SetManagedFields(nil)
	return o
}

func cleanList(l runtime.Object) runtime.Object {
	items, err := meta.ExtractList(l)
	if err == nil {
		for _, it := range items {
			if o, ok := it.(client.Object); ok {
				o.SetManagedFields(nil)
			}
		}
	}
	return l
}
