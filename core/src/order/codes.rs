//! Code lists the validator checks against. Both lists are sorted, so a
//! lookup is a binary search; a unit test keeps them sorted.

/// ISO 4217 alphabetic codes in current use (including funds and metal codes).
pub const CURRENCIES: [&str; 182] = [
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD",
    "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUC", "CUP",
    "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP",
    "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS",
    "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW",
    "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD",
    "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN",
    "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR",
    "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SLL",
    "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY",
    "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES",
    "VND", "VUV", "WST", "XAF", "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XCD", "XCG", "XDR",
    "XOF", "XPD", "XPF", "XPT", "XSU", "XTS", "XUA", "XXX", "YER", "ZAR", "ZMW", "ZWG", "ZWL",
];

/// ISO 3166-1 alpha-2 country codes (officially assigned).
pub const COUNTRIES: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// An ISO 4217 currency, as a small integer: its place in [`CURRENCIES`].
/// Orders and catalog prices compare currencies as these, not as text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(u8);

impl Currency {
    pub fn code(self) -> &'static str {
        CURRENCIES[usize::from(self.0)]
    }
}

/// Three ASCII bytes as one integer that sorts as the text does.
const fn pack3(code: &[u8]) -> u32 {
    (code[0] as u32) << 16 | (code[1] as u32) << 8 | code[2] as u32
}

/// [`CURRENCIES`] packed by [`pack3`], in the same (sorted) order.
const PACKED_CURRENCIES: [u32; CURRENCIES.len()] = {
    let mut packed = [0; CURRENCIES.len()];
    let mut i = 0;
    while i < CURRENCIES.len() {
        packed[i] = pack3(CURRENCIES[i].as_bytes());
        i += 1;
    }
    packed
};

/// The currency `code` names, if it is an ISO 4217 code.
pub fn currency(code: &str) -> Option<Currency> {
    if code.len() != 3 {
        return None;
    }
    let index = PACKED_CURRENCIES
        .binary_search(&pack3(code.as_bytes()))
        .ok()?;
    // 182 codes: every index fits in a u8.
    Some(Currency(index as u8))
}

/// Is `code` an ISO 4217 currency code?
pub fn is_currency(code: &str) -> bool {
    currency(code).is_some()
}

/// [`COUNTRIES`] as one bit per code: bit `second letter` of word `first
/// letter`, so a lookup is two subtractions and a bit test.
const COUNTRY_BITS: [u32; 26] = {
    let mut bits = [0; 26];
    let mut i = 0;
    while i < COUNTRIES.len() {
        let code = COUNTRIES[i].as_bytes();
        bits[(code[0] - b'A') as usize] |= 1 << (code[1] - b'A');
        i += 1;
    }
    bits
};

/// Is `code` an ISO 3166-1 alpha-2 country code?
pub fn is_country(code: &str) -> bool {
    match *code.as_bytes() {
        [first @ b'A'..=b'Z', second @ b'A'..=b'Z'] => {
            COUNTRY_BITS[usize::from(first - b'A')] & (1 << (second - b'A')) != 0
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_sorted_and_unique() {
        assert!(CURRENCIES.windows(2).all(|w| w[0] < w[1]));
        assert!(COUNTRIES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn every_code_and_nothing_else_is_found() {
        for (i, code) in CURRENCIES.iter().enumerate() {
            assert_eq!(currency(code).map(Currency::code), Some(*code));
            assert_eq!(currency(code), Some(Currency(i as u8)));
        }
        for code in COUNTRIES {
            assert!(is_country(code), "{code}");
        }
        // Every other two- and three-letter text, and some that are not.
        let letters = || (b'@'..=b'[').chain([b'a', b'z', 0xc3]);
        for a in letters() {
            for b in letters() {
                let two = String::from_utf8_lossy(&[a, b]).into_owned();
                assert_eq!(is_country(&two), COUNTRIES.contains(&two.as_str()), "{two}");
                for c in letters() {
                    let three = String::from_utf8_lossy(&[a, b, c]).into_owned();
                    let listed = CURRENCIES.contains(&three.as_str());
                    assert_eq!(is_currency(&three), listed, "{three}");
                }
            }
        }
        for odd in ["", "E", "EU", "EURO", "D", "DEU", "É"] {
            assert!(!is_currency(odd) || odd == "EUR", "{odd}");
            assert!(!is_country(odd), "{odd}");
        }
    }

    #[test]
    fn lookups() {
        assert!(
            is_currency("EUR") && is_currency("JPY") && !is_currency("EURO") && !is_currency("eur")
        );
        assert!(is_country("DE") && !is_country("XX") && !is_country("de"));
    }
}
