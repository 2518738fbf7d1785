#!/usr/bin/env python3
# Writes docs/alerts_test.yaml: the promtool scenarios of docs/alerts.yaml, with the series
# three replicas expose. Run from the repository root: python3 scripts/alert_scenarios.py
# (needs PyYAML), then promtool test rules docs/alerts_test.yaml.
import yaml, re
rules = {}
for g in yaml.safe_load(open('docs/alerts.yaml'))['groups']:
    for r in g['rules']:
        rules[r['alert']] = r
def ann(alert, labels):
    out = {}
    for k, v in rules[alert]['annotations'].items():
        out[k] = re.sub(r'\{\{ \$labels\.(\w+) \}\}', lambda m: labels.get(m.group(1), ''), v)
    return out
def firing(alert, **labels):
    l = dict(labels); l['severity'] = rules[alert]['labels']['severity']
    return {'exp_labels': l, 'exp_annotations': ann(alert, labels)}
PAGES = ['SellersnapDown','SellersnapJobFailing','SellersnapNoRecentSuccess','SellersnapBacklogStuck','SellersnapDependencyDown']
ALL = PAGES + ['SellersnapCronJobNotSucceeding', 'SellersnapExportsFailing','SellersnapPanics','SellersnapLatestPointerFailing','SellersnapStateCorrected','SellersnapRowsChangedAfterExport']
PODS = ['10.0.0.1:9464','10.0.0.2:9464','10.0.0.3:9464']

def healthy(job, mode, interval, pods=PODS, minutes=200, skip=()):
    """The series of a job that works, as every replica exposes them."""
    s = []
    for i, p in enumerate(pods):
        if p in skip: continue
        L = f'job="{job}", instance="{p}"'
        s += [
            {'series': f'sellersnap_schedule_interval_seconds{{{L}, mode="{mode}"}}', 'values': f'{interval}x{minutes}'},
            {'series': f'sellersnap_failing_since_timestamp_seconds{{{L}}}', 'values': f'0x{minutes}'},
            {'series': f'sellersnap_backlog_runs{{{L}}}', 'values': f'0x{minutes}'},
            {'series': f'sellersnap_oldest_pending_run_age_seconds{{{L}}}', 'values': f'0x{minutes}'},
            {'series': f'sellersnap_dependency_up{{dependency="bucket", {L}}}', 'values': f'1x{minutes}'},
            {'series': f'sellersnap_runs_total{{{L}, outcome="failure"}}', 'values': f'0x{minutes}'},
        ]
        if mode == 'per_run':
            # a per_run job with runs coming in: last success follows the clock
            s.append({'series': f'sellersnap_last_success_timestamp_seconds{{{L}}}', 'values': f'60+60x{minutes}'})
        else:
            s.append({'series': f'sellersnap_last_success_timestamp_seconds{{{L}}}', 'values': f'60x{minutes}'})
    return s
def infra(pods=PODS, minutes=200, up=None):
    s = []
    for p in pods:
        s.append({'series': f'up{{job="sellersnap", instance="{p}"}}', 'values': (up or {}).get(p, f'1x{minutes}')})
        s.append({'series': f'sellersnap_dependency_up{{dependency="postgres", job="", instance="{p}"}}', 'values': f'1x{minutes}'})
    return s
def replace(series, name_prefix, values, job=None):
    out = []
    for x in series:
        if (x['series'].startswith(name_prefix + '{') or ('{' in name_prefix and x['series'].startswith(name_prefix))) and (job is None or f'job="{job}"' in x['series']):
            x = dict(x, values=values)
        out.append(x)
    return out
def quiet(times, names=ALL):
    return [{'eval_time': t, 'alertname': a, 'exp_alerts': []} for t in times for a in names]

tests = []
# 1. A nightly full job that fails: it retries only tomorrow. Pages within the interval (capped at 1h) + 15 min.
s = infra() + healthy('full-nightly', 'full', 86400)
s = replace(s, 'sellersnap_failing_since_timestamp_seconds', '0x9 600x190', 'full-nightly')
tests.append({'name': 'nightly full job failing: pages 75 min after the failed night (not 48 h later)', 'interval': '1m', 'input_series': s,
  'alert_rule_test': quiet(['80m'], ['SellersnapJobFailing']) + [{'eval_time': '90m', 'alertname': 'SellersnapJobFailing', 'exp_alerts': [firing('SellersnapJobFailing', job='full-nightly')]}]})
# 2. A job that has never succeeded (last success 0 everywhere), failing since start-up.
s = infra() + healthy('full-nightly', 'full', 86400)
s = replace(s, 'sellersnap_last_success_timestamp_seconds', '0x200', 'full-nightly')
s = replace(s, 'sellersnap_failing_since_timestamp_seconds', '0x4 300x195', 'full-nightly')
tests.append({'name': 'a job that never succeeded pages like one that stopped succeeding', 'interval': '1m', 'input_series': s,
  'alert_rule_test': [{'eval_time': '90m', 'alertname': 'SellersnapJobFailing', 'exp_alerts': [firing('SellersnapJobFailing', job='full-nightly')]}] + quiet(['90m'], ['SellersnapNoRecentSuccess'])})
# 3. A per_run backlog stuck: one run pending for over an hour on every replica.
s = infra() + healthy('new-sellers', 'per_run', 900)
s = replace(s, 'sellersnap_oldest_pending_run_age_seconds', '0+60x200', 'new-sellers')
s = replace(s, 'sellersnap_backlog_runs', '1x200', 'new-sellers')
tests.append({'name': 'per_run backlog stuck: pages when a run has waited over an hour (+15 min)', 'interval': '1m', 'input_series': s,
  'alert_rule_test': quiet(['70m'], ['SellersnapBacklogStuck']) + [{'eval_time': '80m', 'alertname': 'SellersnapBacklogStuck', 'exp_alerts': [firing('SellersnapBacklogStuck', job='new-sellers')]}]})
# 4. A job's dependency failing on every replica (its exports fail with it): a bucket that
# cannot be written, an Iceberg catalog that does not answer.
def job_dependency_down(name, dependency, series):
    s = series
    s = replace(s, 'sellersnap_failing_since_timestamp_seconds', '0x9 600x191', 'new-sellers')
    s = replace(s, 'sellersnap_last_success_timestamp_seconds', '60+60x9 600x191', 'new-sellers')
    tests.append({'name': name, 'interval': '1m', 'input_series': s,
      'alert_rule_test': quiet(['13m'], ['SellersnapDependencyDown']) + [
        {'eval_time': '17m', 'alertname': 'SellersnapDependencyDown', 'exp_alerts': [firing('SellersnapDependencyDown', dependency=dependency, job='new-sellers')]},
        {'eval_time': '45m', 'alertname': 'SellersnapJobFailing', 'exp_alerts': [firing('SellersnapJobFailing', job='new-sellers')]}]})
s = infra() + healthy('new-sellers', 'per_run', 900)
job_dependency_down('bucket not writable: pages within 5 minutes of the check, then the job too', 'bucket',
    replace(s, 'sellersnap_dependency_up{dependency="bucket"', '1x9 0x191', None))
s = infra() + healthy('new-sellers', 'per_run', 900)
job_dependency_down('Iceberg catalog unreachable: pages within 5 minutes, then the job too', 'iceberg_catalog',
    s + [{'series': f'sellersnap_dependency_up{{dependency="iceberg_catalog", job="new-sellers", instance="{p}"}}', 'values': '1x9 0x191'} for p in PODS])
# 5. The database down for more than 5 minutes.
s = infra() + healthy('new-sellers', 'per_run', 900)
s = replace(s, 'sellersnap_dependency_up{dependency="postgres"', '1x9 0x191', None)
tests.append({'name': 'database down > 5 min: pages', 'interval': '1m', 'input_series': s,
  'alert_rule_test': quiet(['13m'], ['SellersnapDependencyDown']) + [{'eval_time': '17m', 'alertname': 'SellersnapDependencyDown', 'exp_alerts': [firing('SellersnapDependencyDown', dependency='postgres')]}]})
# 6. Every pod gone (crash-loop, bad config): up 0, the sellersnap series stop.
s = infra(up={p: '1x9 0x191' for p in PODS})
tests.append({'name': 'every pod gone: pages within 5 minutes', 'interval': '1m', 'input_series': s,
  'alert_rule_test': quiet(['13m'], ['SellersnapDown']) + [{'eval_time': '17m', 'alertname': 'SellersnapDown', 'exp_alerts': [firing('SellersnapDown')]}]})
# 6b. No target at all (never scraped): absent.
tests.append({'name': 'nothing scraped at all: pages', 'interval': '1m', 'input_series': [{'series': 'up{job="other", instance="x"}', 'values': '1x30'}],
  'alert_rule_test': [{'eval_time': '10m', 'alertname': 'SellersnapDown', 'exp_alerts': [firing('SellersnapDown')]}]})
# 7. One pod of three gone: quiet.
s = infra(up={PODS[2]: '1x9 0x191'}) + healthy('new-sellers', 'per_run', 900, skip=()) + healthy('full-nightly', 'full', 86400)
s = [x for x in s if not (PODS[2] in x['series'] and x['series'].startswith('sellersnap_'))] + \
    [dict(x, values='%s' % x['values'].split('x')[0] + 'x9') for x in healthy('new-sellers', 'per_run', 900, pods=[PODS[2]], minutes=9)]
tests.append({'name': 'one pod of three gone: quiet', 'interval': '1m', 'input_series': s, 'alert_rule_test': quiet(['30m', '120m'])})
# 8. A 10 s database blip: one failed pass, one failed export, the next pass succeeds.
s = infra() + healthy('new-sellers', 'per_run', 900)
s = replace(s, 'sellersnap_dependency_up{dependency="postgres"', '1x9 0 1x190', None)
s = replace(s, 'sellersnap_failing_since_timestamp_seconds', '0x9 600x15 0x175', 'new-sellers')
s = replace(s, 'sellersnap_runs_total', '0x9 1x191', 'new-sellers')
tests.append({'name': 'a 10 s database blip: quiet', 'interval': '1m', 'input_series': s, 'alert_rule_test': quiet(['12m', '20m', '30m', '60m'])})
# 9. A declared rerun (backfill) in progress on every pod: exports succeed, nothing waits.
s = infra() + healthy('new-sellers', 'per_run', 900)
for p in PODS:
    s.append({'series': f'sellersnap_reruns_total{{job="new-sellers", instance="{p}", status="running"}}', 'values': '0x9 1x191'})
    s.append({'series': f'sellersnap_exports_in_flight{{job="new-sellers", instance="{p}"}}', 'values': '0x9 1x100 0x90'})
tests.append({'name': 'a rerun in progress: quiet', 'interval': '1m', 'input_series': s, 'alert_rule_test': quiet(['30m', '90m'])})
# 10. Three replicas of a per_run job with runs waiting and no success for 2 intervals: the
# backstop fires (one series per pod used to make it fail with many-to-many matching).
s = infra() + healthy('new-sellers', 'per_run', 900)
s = replace(s, 'sellersnap_last_success_timestamp_seconds', '60x200', 'new-sellers')
s = replace(s, 'sellersnap_backlog_runs', '0x9 2x191', 'new-sellers')
tests.append({'name': 'per_run job, three replicas, runs waiting, nothing published: the backstop pages', 'interval': '1m', 'input_series': s,
  'alert_rule_test': quiet(['30m'], ['SellersnapNoRecentSuccess']) + [{'eval_time': '40m', 'alertname': 'SellersnapNoRecentSuccess', 'exp_alerts': [firing('SellersnapNoRecentSuccess', job='new-sellers')]}]})
# 11. A healthy nightly job the day after its snapshot: quiet (last success 23 h ago).
s = infra(minutes=1500) + healthy('full-nightly', 'full', 86400, minutes=1500)
tests.append({'name': 'a healthy nightly job 23 h after its snapshot: quiet', 'interval': '1m', 'input_series': s, 'alert_rule_test': quiet(['1380m'])})

# 12. The CronJob deployment: runs succeed every 15 minutes, then fail from 60m on.
s = [{'series': 'kube_cronjob_status_last_successful_time{namespace="data", cronjob="sellersnap-once", job="kube-state-metrics"}',
      'values': ' '.join(str(60 * 15 * (m // 15)) for m in range(60)) + ' ' + ' '.join(['3600'] * 140)}]
tests.append({'name': 'CronJob deployment: pages an hour (+5 min) after its last successful run', 'interval': '1m', 'input_series': s,
  'alert_rule_test': quiet(['50m', '115m'], ['SellersnapCronJobNotSucceeding']) + [{'eval_time': '130m', 'alertname': 'SellersnapCronJobNotSucceeding',
    'exp_alerts': [firing('SellersnapCronJobNotSucceeding', namespace='data', cronjob='sellersnap-once')]}]})

doc = {'rule_files': ['alerts.yaml'], 'evaluation_interval': '1m', 'tests': tests}
hdr = ('# Scenarios for docs/alerts.yaml, with the series three replicas expose (instance\n'
       '# 10.0.0.1-3), each saying by when a failure must page and which cases stay quiet.\n'
       '# Run: promtool test rules docs/alerts_test.yaml (make test runs it through\n'
       '# internal/daemon TestAlertScenarios). Made with scripts/alert_scenarios.py; edit that.\n')
open('docs/alerts_test.yaml', 'w').write(hdr + yaml.safe_dump(doc, sort_keys=False, width=200))
