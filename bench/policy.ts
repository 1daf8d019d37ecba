// qrexec policy engine: evaluation latency and reload time with a 10,000-rule policy in 10 files
// (200 services of 40 rules, one admin-like service of 1,990 rules, 10 `*` rules; literals,
// tags, types, @dispvm, ask) against 200 qubes. The rule that decides sits near the end of its
// service's rules. Run: node --import tsx bench/policy.ts   (targets: eval p50 <= 100 us, reload <= 300 ms)
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { loadPolicyDir, type DomainInfo, type Policy, type PolicyRequest, type SystemInfo } from '../src/policy/index.js';
import { ms, percentile, tempDir } from './stats.js';

const QUBES = 200;
const SERVICES = 200;
const RULES_PER_SERVICE = 40;
const ADMIN_RULES = 1990;
const FILES = 10;
const WARMUP = 2000;
const EVALUATIONS = 20_000;
const RELOADS = 10;

/** Deterministic pseudo-random numbers (mulberry32), so every run measures the same work. */
function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(1);
const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)] as T;

const qube = (i: number): string => `q${String(i).padStart(3, '0')}`;
const dvm = (i: number): string => `dvm${i}`;

function systemInfo(): SystemInfo {
  const domains: Record<string, DomainInfo> = {
    dom0: { type: 'AdminVM', tags: [], default_dispvm: null, template_for_dispvms: false, power_state: 'Running', uuid: '00000000-0000-0000-0000-000000000000' },
  };
  for (let i = 0; i < QUBES; i++) {
    const isDvm = i < 10;
    domains[isDvm ? dvm(i) : qube(i)] = {
      type: i % 25 === 0 ? 'TemplateVM' : 'AppVM',
      tags: [`t${i % 20}`, ...(i % 3 === 0 ? ['managed'] : [])],
      default_dispvm: dvm(i % 10),
      template_for_dispvms: isDvm,
      power_state: i % 2 === 0 ? 'Running' : 'Halted',
      uuid: `${String(i).padStart(8, '0')}-0000-4000-8000-000000000000`,
    };
  }
  return { domains };
}

/** Rules that never decide the measured requests (other sources, arguments, targets). */
function filler(service: string, i: number): string {
  const src = qube(10 + ((i * 7) % 190));
  switch (i % 8) {
    case 0: return `${service} +arg${i} @anyvm @anyvm allow`;
    case 1: return `${service} * ${src} ${qube(10 + ((i * 13) % 190))} allow`;
    case 2: return `${service} * @tag:nobody-${i} @anyvm ask default_target=@dispvm`;
    case 3: return `${service} * ${src} @dispvm:${dvm(i % 10)} allow`;
    case 4: return `${service} +x${i} @tag:t${i % 20} @tag:t${(i + 1) % 20} allow target=dom0`;
    case 5: return `${service} * @type:StandaloneVM @anyvm deny notify=no`;
    case 6: return `${service} * ${src} @default allow target=${qube(10 + ((i * 3) % 190))} user=root`;
    default: return `${service} +y${i} @anyvm ${src} deny`;
  }
}

interface Generated {
  readonly files: string[][];
  readonly requests: PolicyRequest[];
  readonly adminRequests: PolicyRequest[];
}

function generate(): Generated {
  const lines: string[] = [];
  const late: string[] = [];
  for (let s = 0; s < SERVICES; s++) {
    const service = `bench.Service${s}`;
    for (let i = 0; i < RULES_PER_SERVICE - 3; i++) lines.push(filler(service, i));
    // The rules that decide, kept for the end of the policy.
    late.push(`${service} * @tag:t${s % 20} @dispvm allow`);
    late.push(`${service} * @tag:t${s % 20} @tag:t${(s + 5) % 20} ${s % 2 === 0 ? 'allow' : 'ask'}`);
    late.push(`${service} * @anyvm @anyvm deny`);
  }
  for (let i = 0; i < ADMIN_RULES - 2; i++) lines.push(`admin.vm.List * ${qube(10 + (i % 190))}-other @tag:t${i % 20} allow target=dom0`);
  late.push('admin.vm.List * @tag:managed @tag:managed allow target=dom0', 'admin.vm.List * @anyvm @anyvm deny');
  for (let i = 0; i < 9; i++) lines.push(`* * ${qube(10 + i)}-gone @anyvm deny`);
  late.push('* * @anyvm @anyvm deny');
  // Shuffle the filler across files; the deciding rules go last.
  for (let i = lines.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [lines[i], lines[j]] = [lines[j] as string, lines[i] as string];
  }
  const all = [...lines, ...late];
  const per = Math.ceil(all.length / FILES);
  const files = Array.from({ length: FILES }, (_, f) => all.slice(f * per, (f + 1) * per));

  // Sources mostly carry the tag of the service's deciding rules; targets are a disposable, a
  // qube with the target tag, or anything. Qube i has tag t(i % 20); i >= 10 are plain qubes.
  const withTag = (t: number): string => qube(20 + t + 20 * Math.floor(rand() * 9));
  const requests: PolicyRequest[] = [];
  for (let i = 0; i < 1000; i++) {
    const s = Math.floor(rand() * SERVICES);
    const source = rand() < 0.8 ? withTag(s % 20) : qube(10 + Math.floor(rand() * 190));
    const target = pick(['@dispvm', withTag((s + 5) % 20), withTag((s + 5) % 20), qube(10 + Math.floor(rand() * 190)), '', 'dom0']);
    requests.push({ source, target, service: `bench.Service${s}`, argument: pick(['+', '+', '+arg1', '+z']) });
  }
  // Listing qubes as a management qube would: tagged 'managed' sources (i % 3 == 0).
  const adminRequests: PolicyRequest[] = [];
  for (let i = 0; i < 1000; i++) {
    adminRequests.push({ source: qube(12 + 3 * Math.floor(rand() * 62)), target: qube(10 + Math.floor(rand() * 190)), service: 'admin.vm.List', argument: '+' });
  }
  return { files, requests, adminRequests };
}

function measure(policy: Policy, sys: SystemInfo, requests: readonly PolicyRequest[]): { samples: number[]; results: Map<string, number> } {
  const results = new Map<string, number>();
  for (let i = 0; i < WARMUP; i++) policy.evaluate(requests[i % requests.length] as PolicyRequest, sys);
  const samples: number[] = [];
  for (let i = 0; i < EVALUATIONS; i++) {
    const req = requests[i % requests.length] as PolicyRequest;
    const t0 = performance.now();
    const r = policy.evaluate(req, sys);
    samples.push((performance.now() - t0) * 1000);
    results.set(r.result, (results.get(r.result) ?? 0) + 1);
  }
  return { samples, results };
}

const us = (v: number): string => v.toFixed(1);

async function main(): Promise<void> {
  using tmp = tempDir('bulkhead-bench-policy-');
  const gen = generate();
  gen.files.forEach((rules, f) => {
    fs.writeFileSync(path.join(tmp.path, `50-bench-${String(f).padStart(2, '0')}.policy`), `# generated\n${rules.join('\n')}\n`);
  });
  const sys = systemInfo();

  const reloads: number[] = [];
  let policy: Policy | undefined;
  for (let i = 0; i < RELOADS; i++) {
    const t0 = performance.now();
    const loaded = await loadPolicyDir(tmp.path);
    reloads.push(performance.now() - t0);
    if (!loaded.ok) throw new Error(`generated policy does not load:\n${loaded.errors.slice(0, 5).join('\n')}`);
    policy = loaded.policy;
  }
  if (!policy) throw new Error('no policy');

  const mix = measure(policy, sys, gen.requests);
  const admin = measure(policy, sys, gen.adminRequests);
  const counts = (m: Map<string, number>): string => [...m].map(([k, v]) => `${k} ${v}`).join(', ');

  console.log(`policy: ${policy.ruleCount} rules in ${FILES} files, ${Object.keys(sys.domains).length} qubes`);
  console.log(`  eval, ${SERVICES} services of ${RULES_PER_SERVICE} rules (+ ${ADMIN_RULES} admin, 10 '*'); ${EVALUATIONS} requests (${counts(mix.results)})`);
  console.log(`    p50 ${us(percentile(mix.samples, 50))} us  p90 ${us(percentile(mix.samples, 90))} us  p99 ${us(percentile(mix.samples, 99))} us  max ${us(Math.max(...mix.samples))} us`);
  console.log(`  eval, admin.vm.List with ${ADMIN_RULES} rules (${counts(admin.results)})`);
  console.log(`    p50 ${us(percentile(admin.samples, 50))} us  p90 ${us(percentile(admin.samples, 90))} us  p99 ${us(percentile(admin.samples, 99))} us  max ${us(Math.max(...admin.samples))} us`);
  console.log(`  reload (load of the directory), ${RELOADS} runs: median ${ms(percentile(reloads, 50))} ms  first ${ms(reloads[0] ?? NaN)} ms  max ${ms(Math.max(...reloads))} ms`);
  console.log(`policy_reload: ${ms(Math.max(...reloads))} ms`);
  console.log(`policy_eval_p50: ${us(percentile(mix.samples, 50))} us`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
