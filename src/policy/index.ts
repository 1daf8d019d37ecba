// The qrexec policy engine (Qubes R4.1+ format): a pure layer, node built-ins only. Parse and
// load policy files, evaluate requests against a system-info snapshot, settle asks.
// docs/policy.md describes the format as implemented here.
export { answerAsk, Policy, type AskResolution, type PolicyRequest, type Resolution } from './engine.js';
export { MemoryPolicyFs, nodePolicyFs, statStampSync, type PolicyFs, type Stamp } from './fs.js';
export {
  loadFailure,
  loadPolicyDir,
  MAX_INCLUDE_DEPTH,
  MAX_POLICY_BYTES,
  MAX_POLICY_FILES,
  policyFromText,
  type LoadResult,
  type Watched,
} from './loader.js';
export { formatError, parseOldSyntaxText, parsePolicyText, type Entry, type ParsedText, type PolicyError, type Rule } from './parser.js';
export type { DomainInfo, SystemInfo } from './system.js';
export { PolicySyntaxError } from './tokens.js';
