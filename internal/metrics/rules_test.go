package metrics

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/example/postgres-operator/internal/instance"
)

const promDir = "../../config/prometheus"

// knownNames are the series the agent and the operator export.
func knownNames() []string {
	return append(Names(), DescribedNames(instance.MetricsCollector())...)
}

// seriesName matches the names of our series in PromQL.
var seriesName = regexp.MustCompile(`\bpostgres_[a-z_]+\b`)

// referenced returns the series names an expression text uses that neither the
// agent nor the operator exports.
func unknownSeries(text string) []string {
	known := knownNames()
	var out []string
	for _, n := range seriesName.FindAllString(text, -1) {
		if !slices.Contains(known, n) && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// TestAlertRules runs `promtool check rules` and `promtool test rules`
// (config/prometheus/rules_test.yaml) on the PrometheusRule's groups.
func TestAlertRules(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(promDir, "prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		Kind string         `json:"kind"`
		Spec map[string]any `json:"spec"`
	}
	if err := yaml.Unmarshal(raw, &rule); err != nil {
		t.Fatal(err)
	}
	if rule.Kind != "PrometheusRule" || rule.Spec["groups"] == nil {
		t.Fatalf("prometheusrule.yaml: kind %q without groups", rule.Kind)
	}
	var exprs struct {
		Spec struct {
			Groups []struct {
				Rules []struct {
					Alert string `json:"alert"`
					Expr  string `json:"expr"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(raw, &exprs); err != nil {
		t.Fatal(err)
	}
	for _, g := range exprs.Spec.Groups {
		for _, r := range g.Rules {
			if unknown := unknownSeries(r.Expr); len(unknown) > 0 {
				t.Errorf("alert %s uses series nobody exports: %v", r.Alert, unknown)
			}
		}
	}

	promtool := os.Getenv("PROMTOOL")
	if promtool == "" {
		t.Skip("PROMTOOL is not set (make test builds the pinned promtool and sets it)")
	}
	dir := t.TempDir()
	groups, err := yaml.Marshal(rule.Spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), groups, 0o600); err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(filepath.Join(promDir, "rules_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules_test.yaml"), tests, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"check", "rules", "rules.yaml"}, {"test", "rules", "rules_test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}

// TestEveryAlertHasAUnitTest: each alert of the rules fires in at least one
// case of rules_test.yaml.
func TestEveryAlertHasAUnitTest(t *testing.T) {
	rules, err := os.ReadFile(filepath.Join(promDir, "prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(filepath.Join(promDir, "rules_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		Spec struct {
			Groups []struct {
				Rules []struct {
					Alert string `json:"alert"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(rules, &rule); err != nil {
		t.Fatal(err)
	}
	var suite struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `json:"alertname"`
				ExpAlerts []map[string]any `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(tests, &suite); err != nil {
		t.Fatal(err)
	}
	fires := map[string]bool{}
	for _, tc := range suite.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
	}
	n := 0
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			n++
			if r.Alert != "" && !fires[r.Alert] {
				t.Errorf("alert %s never fires in rules_test.yaml", r.Alert)
			}
		}
	}
	if n == 0 {
		t.Fatal("no rules")
	}
}

// TestDashboard: the Grafana dashboard is JSON and queries only series that
// exist.
func TestDashboard(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(promDir, "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	if dash.UID == "" {
		t.Error("the dashboard has no uid")
	}
	queries := 0
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			queries++
			if unknown := unknownSeries(q.Expr); len(unknown) > 0 {
				t.Errorf("panel %q queries series nobody exports: %v", p.Title, unknown)
			}
		}
	}
	if queries < 20 {
		t.Errorf("%d queries: the dashboard is missing panels", queries)
	}
}

func TestUnknownSeriesAreCaught(t *testing.T) {
	if got := unknownSeries(`postgres_up == 0 and postgres_not_a_series > 1`); !slices.Equal(got, []string{"postgres_not_a_series"}) {
		t.Errorf("unknownSeries = %v", got)
	}
}
