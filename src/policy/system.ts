// What the engine knows about the qubes (facts §0): each qube under its name; the engine answers
// `uuid:` keys itself from the entries' uuid fields.

export interface DomainInfo {
  type: string;
  tags: readonly string[];
  default_dispvm: string | null;
  template_for_dispvms: boolean;
  power_state: string;
  uuid: string;
  internal?: boolean;
}

/** Keyed by name (qube names and 'dom0'). `uuid:` keys, if present, are ignored: the engine derives them. */
export interface SystemInfo {
  domains: Record<string, DomainInfo>;
}

export interface Domain {
  readonly name: string;
  readonly info: DomainInfo;
}

/** An evaluation-time view of a SystemInfo; built per evaluation so it never goes stale. */
export class SystemView {
  readonly #domains: Record<string, DomainInfo>;
  #byUuid: Map<string, string> | null = null;
  #names: string[] | null = null;

  constructor(sys: SystemInfo) {
    this.#domains = sys.domains;
  }

  /** The qube a key names: a name, or `uuid:<uuid>` of a named entry. */
  get(key: string): Domain | undefined {
    if (key.startsWith('uuid:')) {
      const name = this.#uuidIndex().get(key.slice(5));
      return name === undefined ? undefined : { name, info: this.#domains[name] as DomainInfo };
    }
    if (!Object.hasOwn(this.#domains, key)) return undefined;
    return { name: key, info: this.#domains[key] as DomainInfo };
  }

  has(key: string): boolean {
    return this.get(key) !== undefined;
  }

  /** Every qube name (dom0 included), never the `uuid:` forms. */
  names(): readonly string[] {
    this.#names ??= Object.keys(this.#domains).filter((k) => !k.startsWith('uuid:'));
    return this.#names;
  }

  #uuidIndex(): Map<string, string> {
    if (this.#byUuid === null) {
      this.#byUuid = new Map();
      for (const name of this.names()) {
        const uuid = (this.#domains[name] as DomainInfo).uuid;
        if (!this.#byUuid.has(uuid)) this.#byUuid.set(uuid, name);
      }
    }
    return this.#byUuid;
  }
}
