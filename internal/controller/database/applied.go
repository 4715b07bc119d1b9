package database

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
)

// AnnotationAppliedHash, on every child the operator applies, is the hash of
// the configuration last applied to it (see applyIfChanged).
const AnnotationAppliedHash = "database.example.com/applied-hash"

// annotate sets an annotation on a typed apply configuration (each embeds
// *ObjectMetaApplyConfiguration).
func annotate(obj any, key, value string) {
	v := reflect.ValueOf(obj)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return
	}
	f := v.Elem().FieldByName("ObjectMetaApplyConfiguration")
	if !f.IsValid() {
		return
	}
	if f.IsNil() {
		f.Set(reflect.ValueOf(&metav1ac.ObjectMetaApplyConfiguration{}))
	}
	meta, ok := f.Interface().(*metav1ac.ObjectMetaApplyConfiguration)
	if !ok {
		return
	}
	if meta.Annotations == nil {
		meta.Annotations = map[string]string{}
	}
	meta.Annotations[key] = value
}

// appliedDifference returns the first field of the apply configuration obj
// whose value live does not hold ("" when live holds them all): each field set
// in obj must have the same value in live (maps by key, lists element by
// element and of the same length). Fields live has in addition (defaults,
// other managers' fields) do not matter, as they would not to an apply. An
// error answers a difference too: an apply is never wrong.
func appliedDifference(obj, live any) string {
	want, err := asJSONMap(obj)
	if err != nil {
		return "(configuration: " + err.Error() + ")"
	}
	have, err := asJSONMap(live)
	if err != nil {
		return "(live object: " + err.Error() + ")"
	}
	return difference(want, have, "")
}

func asJSONMap(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	err = json.Unmarshal(b, &m)
	return m, err
}

func difference(want, have any, path string) string {
	switch w := want.(type) {
	case map[string]any:
		h, ok := have.(map[string]any)
		if !ok {
			return path
		}
		for _, k := range slices.Sorted(maps.Keys(w)) {
			hv, ok := h[k]
			if !ok {
				// Embedded objects (a StatefulSet's claim templates) lose
				// their type fields and namespace in the API server.
				embeddedNamespace := k == "namespace" && path != ".metadata" && strings.HasSuffix(path, ".metadata")
				if isEmpty(w[k]) || k == "apiVersion" || k == "kind" || embeddedNamespace {
					continue
				}
				return path + "." + k
			}
			if d := difference(w[k], hv, path+"."+k); d != "" {
				return d
			}
		}
		return ""
	case []any:
		h, ok := have.([]any)
		if !ok || len(h) != len(w) {
			return path
		}
		for i := range w {
			if d := difference(w[i], h[i], fmt.Sprintf("%s[%d]", path, i)); d != "" {
				return d
			}
		}
		return ""
	default:
		if !reflect.DeepEqual(want, have) {
			return path
		}
		return ""
	}
}

// isEmpty: an empty map or list in the configuration is absent from the
// object the API server returns.
func isEmpty(v any) bool {
	switch x := v.(type) {
	case map[string]any:
		return len(x) == 0
	case []any:
		return len(x) == 0
	}
	return false
}
